"""The README performance section, generated from a committed results file.

    python -m bench.readme [bench/results/<machine>.json]            # print the section
    python -m bench.readme [RESULTS] --write README.md               # replace the section in README.md

The section sits between the markers ``<!-- bench:begin -->`` and ``<!-- bench:end -->``; a test
(tests/test_bench.py) fails when the README's section differs from what this prints for the newest
results file. Without RESULTS: the newest results file under bench/results (kernels-*.json and ablation-*.json excluded).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .report import _flip_note, _floor_lines, auto_lines, auto_targets, eval_table, sweep_run, targets, thread_lines

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def latest_auto() -> Path | None:
    """The newest strong-attack results (``python -m bench --only auto`` writes auto-<machine>.json), or None."""
    files = list(RESULTS.glob("auto-*.json"))
    return max(files, key=lambda p: (json.loads(p.read_text())["meta"]["date"], p.name)) if files else None


def latest() -> Path:
    files = [p for p in RESULTS.glob("*.json") if not p.name.startswith(("kernels-", "ablation-", "auto-"))]
    if not files:
        raise SystemExit("bench.readme: no results under bench/results; run `python -m bench --quick` first")
    return max(files, key=lambda p: (json.loads(p.read_text())["meta"]["date"], p.name))


def section(results: dict, source: str, auto: dict | None = None, auto_source: str | None = None) -> str:
    m, w = results["meta"], results["workloads"]
    run = sweep_run(results)
    threads = run["threads"] if run else m["torch_threads"][0]
    lines = [f"Measured on **{m['machine']}** ({m['cores']} cores, torch {m['torch']}, {m['date']}, commit "
             f"`{m['git_commit']}`, `python -m bench --{m['mode']}`; shared machine, 1-min load average "
             f"{m['load_avg_1min_at_start']} at the start, {m.get('load_avg_1min_at_end')} at the end). Reported: "
             f"**{threads} torch thread(s)**, **CPU time** (`time.process_time`), medians of {w.get('eval_sweep', {}).get('reps', '?')} "
             "alternating repetitions; every contender sets (and restores) its own op backend and thread count. "
             "Same model and images for every contender. The primary bar is the **skilled 20-line PyTorch script** "
             "(`bench/skilled.py`). End-to-end for recapfast is the `recapfast eval` path with its default metrics "
             f"(L-inf, L2, PSNR, SSIM). Source: [{source}]({source}); method and per-change notes: "
             "[bench/NOTES.md](bench/NOTES.md).", ""]
    lines += eval_table(results, threads, sizes=(64, 256))
    extra = thread_lines(results)
    if extra:
        lines += ["", *extra]
    ts = w.get("train_step")
    if ts:
        lines += ["", "Training step (batch 64, 64 px, CPU time): " + ", ".join(
            f"{r['mode']} {r['cpu_ms_per_step']} ms ({r['ratio_vs_plain']:.2f}x)" for r in ts["rows"]) + "."]
    sp = w.get("screen_probe")
    if sp:
        lines += ["", f"`recapfast screen --probe-eps 1,2,3,4,5` costs {sp['probe_over_plain']:.2f}x a screen without "
                      f"probes ({sp['images']} images of {sp['size']} px, {sp['tile']} px tiles, CPU time)"
                      + _flip_note(sp) + "."]
    fl = w.get("floor")
    if fl:
        lines += ["", "Distance to this CPU's convolution floor (one pure forward):", "", *_floor_lines(fl)]
    tg = targets(results)
    if auto is not None:
        am = auto["meta"]
        lines += ["", f"Strong attacks measured on **{am['machine']}** ({am['cores']} cores, {am['date']}, commit "
                      f"`{am['git_commit']}`, 1-min load {am['load_avg_1min_at_start']} at the start, "
                      f"{am.get('load_avg_1min_at_end')} at the end):", "",
                  *auto_lines(auto["workloads"]["auto"], auto_source)]
        tg = tg + auto_targets(auto["workloads"]["auto"])
    if tg:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in tg]
    return "\n".join(lines) + "\n"


def source_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(RESULTS.parent.parent))
    except ValueError:
        return str(path)


def replace_section(readme: str, text: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README has no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{text}{END}{tail}"


def auto_section_args(path: Path | None) -> tuple:
    """(auto results, their source name) for :func:`section`, or () without any."""
    return (json.loads(path.read_text()), source_name(path)) if path is not None else ()


def readme_section(readme: str) -> str:
    """The text between the markers (what :func:`section` must produce)."""
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None, help="replace the section in this README")
    args = parser.parse_args(argv)
    path = args.results or latest()
    auto = latest_auto()
    text = section(json.loads(path.read_text()), source_name(path), *auto_section_args(auto))
    if args.write is None:
        sys.stdout.write(text)
        return 0
    from recapfast.io.atomic import write_text

    write_text(args.write, replace_section(args.write.read_text(), text))
    print(f"bench.readme: wrote the performance section of {args.write} from {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

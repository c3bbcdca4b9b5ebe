"""Print the README performance section from a committed results file.

    python -m bench.readme [bench/results/<machine>.json]

Without an argument: the newest results file under bench/results (kernels-*.json excluded).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .report import eval_table, targets

RESULTS = Path(__file__).resolve().parent / "results"


def latest() -> Path:
    files = [p for p in RESULTS.glob("*.json") if not p.name.startswith("kernels-")]
    if not files:
        raise SystemExit("bench.readme: no results under bench/results; run `python -m bench --quick` first")
    return max(files, key=lambda p: p.stat().st_mtime)


def section(results: dict, source: str) -> str:
    m, w = results["meta"], results["workloads"]
    lines = [f"Measured on **{m['machine']}** ({m['cores']} cores, {m['torch_threads']} torch thread(s), "
             f"torch {m['torch']}, {m['date']}, commit {m['git_commit'][:12]}, `python -m bench --{m['mode']}`; "
             f"shared machine, load average {m['load_avg_1min_at_start']}). Same model and images for every "
             f"contender; speedup = torchattacks-loop time / contender time in the same run. Source: `{source}`.", ""]
    lines += eval_table(results, sizes=(64, 256))
    sc = w.get("scaling")
    if sc and sc.get("marginal_ratio_vs_torchattacks"):
        r = sc["marginal_ratio_vs_torchattacks"].get("recapfast-ext")
        if r is not None:
            lines += ["", f"Each extra eps costs recapfast {100 * r:.0f}% of what it costs the torchattacks loop."]
    ts = w.get("train_step")
    if ts:
        lines += ["", "Training step (batch 64, 64 px): " + ", ".join(
            f"{r['mode']} {r['ms_per_step']} ms ({r['ratio_vs_plain']:.2f}x)" for r in ts["rows"]) + "."]
    missed = [f"{t} (measured {v})" for t, v, ok in targets(results) if not ok]
    if missed:
        lines += ["", "Targets not met on this machine: " + "; ".join(missed) + " — see bench/NOTES.md."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else latest()
    results = json.loads(path.read_text())
    try:
        source = str(path.resolve().relative_to(RESULTS.parent.parent))
    except ValueError:
        source = str(path)
    sys.stdout.write(section(results, source))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The defence frontier (issue 20): train each defence from the bundled baseline, evaluate it under `--attack auto`.

    python docs/robustness/frontier.py --data DATA --test TEST --work WORK [--only NAME,...] [--iters N]
    python docs/robustness/frontier.py --render --work WORK --test TEST   # collect WORK's records into frontier.json
    python docs/robustness/frontier.py --render --longer --work WORK2   # WORK2: a run of other --iters (training length)
    python docs/robustness/frontier.py --render            # frontier.md and frontier.png from frontier.json

For every variant in VARIANTS (each resumable: a finished checkpoint or evaluation in WORK is not redone):

1. `recapfast train DATA/train --val VAL --init baseline --defense D ... --out WORK/NAME.safetensors`
   (the training's own selection: best mean of the weakest class's clean and worst-case validation accuracy,
   FGSM + APGD-10);
2. `recapfast eval TEST --model WORK/NAME.safetensors --attack auto --eps 1,2,3,4,5 --json WORK/NAME_eval.json`
   (APGD 100 steps, Square 1000 queries: the CLI defaults);
3. its clean accuracy, worst case per eps, masking verdict (and which checks flagged), training settings and
   training CPU/wall time are written to docs/robustness/frontier.json.

`--render` writes frontier.md (the table docs/robustness.md and the README show; tests/test_frontier.py checks they
hold it) and frontier.png (clean accuracy against the worst case at eps 1 and at eps 2, one point per variant;
a masked variant is drawn hollow and named so).  The bundled baseline and paper models (REFERENCES) are evaluated
the same way, as references.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "frontier.json"
TABLE = HERE / "frontier.md"
PLOT = HERE / "frontier.png"
EPS = "1,2,3,4,5"
PAGES = (HERE.parent / "robustness.md", HERE.parent.parent / "README.md")
BEGIN, END = "<!-- frontier:begin", "<!-- frontier:end -->"

# The bundled models, evaluated alike as references (not trained here): the undefended baseline, and `paper` (Zhao et
# al.'s eq. 5-7 as bundled: 1500 iterations, FGSM selection; `robust` is the same weights today).
REFERENCES = {"baseline": "none (the bundled baseline)", "paper": "the bundled paper model (eq. 5-7, FGSM-selected)"}

# name: (defence arguments, activation).  `paper` is Zhao et al.'s eq. 5-7 (finite-difference penalty), fast-at is
# FGSM from a random start (step 1.25 eps), trades the KL term with a PGD-3 inner maximization.
VARIANTS = {
    "paper-l1-relu": (["--defense", "paper", "--penalty", "1", "--penalty-mode", "fd"], "relu"),
    "paper-l10-relu": (["--defense", "paper", "--penalty", "10", "--penalty-mode", "fd"], "relu"),
    "paper-l100-relu": (["--defense", "paper", "--penalty", "100", "--penalty-mode", "fd"], "relu"),
    "paper-l10-softplus": (["--defense", "paper", "--penalty", "10", "--penalty-mode", "fd"], "softplus"),
    "paper-l100-softplus": (["--defense", "paper", "--penalty", "100", "--penalty-mode", "fd"], "softplus"),
    "fast-at-relu": (["--defense", "fast-at"], "relu"),
    "fast-at-softplus": (["--defense", "fast-at"], "softplus"),
    "trades-b1-relu": (["--defense", "trades", "--trades-beta", "1", "--trades-steps", "3"], "relu"),
    "trades-b6-relu": (["--defense", "trades", "--trades-beta", "6", "--trades-steps", "3"], "relu"),
}


def _run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (stderr to ``log``); returns its wall seconds.  A failure stops the script with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    if proc.returncode != 0:
        sys.exit(f"frontier: {' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def _cpu_of_children() -> float:
    r = os.times()
    return r.children_user + r.children_system


def run_variant(name: str, args, data: Path, test: Path, work: Path, iters: int) -> dict:
    val = args.val or data / "val"
    defence, activation = VARIANTS[name] if name not in REFERENCES else ([], None)
    ckpt = work / f"{name}.safetensors"
    record = {"name": name, "defense_args": defence, "activation": activation or "relu"}
    timing = work / f"{name}.time.json"
    if name in REFERENCES:
        ckpt = Path(name)
    elif not ckpt.is_file():
        cpu0 = _cpu_of_children()
        wall = _run([sys.executable, "-m", "recapfast", "train", str(data / "train"), "--val", str(val),
                     "--init", "baseline", *defence, "--activation", activation, "--iters", str(iters),
                     "--lr", "3e-4", "--lr-step", str(max(1, iters // 3)), "--lr-decay", "0.7",
                     "--val-every", str(max(1, iters // 5)), "--seed", "0", "--device", "cpu",
                     "--out", str(ckpt), "--force"], work / f"{name}.train.log")
        timing.write_text(json.dumps({"train_wall_seconds": wall, "train_cpu_seconds": _cpu_of_children() - cpu0}))
    if timing.is_file():
        record.update(json.loads(timing.read_text()))
    out = work / f"{name}_eval.json"
    if not out.is_file():
        _run([sys.executable, "-m", "recapfast", "eval", str(test), "--model", str(ckpt), "--attack", "auto",
              "--eps", EPS, "--json", str(out), "-q"], work / f"{name}.eval.log")
    ev = json.loads(out.read_text())
    if ckpt.suffix == ".safetensors":
        saved = json.loads(ckpt.with_suffix(".json").read_text())
        record["training"] = saved["training"]
        record["selection"] = saved["selection"]["rule"]
    flagged = [c["check"] for c in ev["masking"]["checks"] if c["status"] == "flagged"]
    if ev["masking"].get("degenerate", {}).get("status") == "flagged":
        flagged.append("degenerate")
    record.update(patches=ev["patches"], clean=ev["clean_accuracy"],
                  worst={f"{c['eps']:g}": c["accuracy"] for c in ev["worst_case"]["cells"]},
                  worst_per_class={f"{c['eps']:g}": c["accuracy_per_class"] for c in ev["worst_case"]["cells"]},
                  masking_suspected=bool(ev["masking"]["suspected"]), masking_flags=flagged,
                  model_sha256=ev.get("model_sha256"), eval_seconds=ev["seconds"],
                  patches_per_class=ev["patches_per_class"], clean_per_class=ev["clean_accuracy_per_class"],
                  clean_auc=ev["detection"]["clean"]["auc"])
    return record


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _references(rows: list) -> str:
    """The bundled models' clean and eps-1 worst case, to end the summary sentence."""
    said = {"baseline": "the undefended baseline", "paper": "the bundled `paper` model (= `robust`)"}
    refs = [f"{said[r['name']]}: {pct(r['clean'])} clean, {pct(r['worst']['1'])} at eps 1" for r in rows
            if r["name"] in REFERENCES]
    return ("; " + "; ".join(refs) + ".") if refs else "."


HEAD = ("clean | clean: originals / recaptures | clean AUC | worst case eps=1 | eps=1: originals / recaptures | eps=2 | "
        "eps=3 | eps=4 | eps=5 | masking | training CPU-s |")


def _cells(r: dict) -> str:
    """A record's measured columns, from clean accuracy to training CPU-s ('-' where an older record lacks one)."""
    per_class = " / ".join(pct(a) for a in r["clean_per_class"]) if "clean_per_class" in r else "-"
    auc = f"{r['clean_auc']:.2f}" if "clean_auc" in r else "-"
    mask = ("**suspected**: " + ", ".join(r["masking_flags"])) if r["masking_suspected"] else "no flag"
    cpu = f"{r['train_cpu_seconds']:.0f}" if "train_cpu_seconds" in r else "-"
    worst1 = " / ".join(pct(a) for a in r["worst_per_class"]["1"]) if "worst_per_class" in r else "-"
    return (f"{pct(r['clean'])} | {per_class} | {auc} | {pct(r['worst']['1'])} | {worst1} | "
            + " | ".join(pct(r["worst"][e]) for e in "2345") + f" | {mask} | {cpu} |")


def _weakest(r: dict) -> float:
    """The summary's ranking, the training's selection rule at eps 1: the mean of the weakest class's clean and
    worst-case accuracy (the patch average for an older record without per-class numbers)."""
    if "worst_per_class" in r and "clean_per_class" in r:
        return 0.5 * (min(r["clean_per_class"]) + min(r["worst_per_class"]["1"]))
    return 0.5 * (r["clean"] + r["worst"]["1"])


def _best(best: dict) -> str:
    per_class = (f": {pct(best['clean_per_class'][0])} of originals, {pct(best['clean_per_class'][1])} of recaptures; "
                 f"clean AUC {best['clean_auc']:.2f}" if "clean_per_class" in best else "")
    weakest = (f"; weakest class at eps 1: {pct(min(best['worst_per_class']['1']))}"
               if "worst_per_class" in best else "")
    return (f"**{best['name']}** ({pct(best['clean'])} clean{per_class}; {pct(best['worst']['1'])} at eps 1, "
            f"{pct(best['worst']['2'])} at eps 2{weakest}")


def _constant(rows: list) -> list:
    """What a constant answer scores on these patches: the larger class share, clean and under every attack."""
    counts = next((r["patches_per_class"] for r in rows if "patches_per_class" in r), None)
    if not counts:
        return []
    share = max(counts) / sum(counts)
    return ["", f"For scale: a constant answer (every patch called the same class) scores {pct(share)} on these "
                f"{sum(counts)} patches ({' + '.join(map(str, counts))} per class), clean and under every attack, since "
                f"no perturbation changes it; a worst case near that with one class mostly wrong (the per-class "
                f"column) is a model close to a constant, not a defence."]


def render(results: dict) -> str:
    rows = results["variants"]
    lines = ["| model | defence | activation | " + HEAD, "|---|---|---|" + "---|" * HEAD.count("|")]
    for r in rows:
        d = " ".join(r["defense_args"]) or REFERENCES[r["name"]]
        lines.append(f"| {r['name']} | `{d}` | {r['activation']} | " + _cells(r))
    trained = [r for r in rows if r["name"] not in REFERENCES]
    clear = [r for r in trained if not r["masking_suspected"]]
    if clear:
        best = max(clear, key=_weakest)
        lines += ["", f"Best mean of the weakest class's clean and worst-case accuracy at eps 1 among the {len(clear)} "
                      f"of {len(trained)} defences no masking check flagged: {_best(best)})" + _references(rows)]
    elif trained:
        best = max(trained, key=_weakest)
        lines += ["", f"A masking check flagged every one of the {len(trained)} defences, so their FGSM rows are not "
                      f"robustness; their worst case (FGSM, APGD and Square) is the number to read. Best mean of the "
                      f"weakest class's clean and worst-case accuracy at eps 1: {_best(best)}; flagged: "
                      f"{', '.join(best['masking_flags'])})" + _references(rows)]
    lines += _constant(rows)
    longer = results.get("longer", [])
    if longer:
        by_name = {r["name"]: r for r in rows}
        lines += ["", "Training length: the same defences trained longer (same data, settings scaled with the "
                      "iterations: lr step = iterations / 3, validation every iterations / 5), on the same test patches, "
                      "beside their frontier row:", "",
                  "| model | iterations | " + HEAD, "|---|---|" + "---|" * HEAD.count("|")]
        for r in longer:
            for row in ([by_name[r["name"]]] if r["name"] in by_name else []) + [r]:
                mark = "" if "selection" in row else " (*)"
                lines.append(f"| {row['name']}{mark} | {row['training']['iters']} | " + _cells(row))
        if any("selection" not in r for r in longer):
            lines += ["", "(*) checkpoint selected by the rule before per-class selection: the patch average of clean "
                          "and worst-case validation accuracy (FGSM + APGD-10 at eps 2)."]
    s = results["setup"]
    lines += ["", f"{rows[0]['patches']} test patches ({s['test']}), `recapfast eval --attack auto --eps {EPS}` "
              f"(FGSM, APGD-CE 100 steps, Square 1000 queries; worst case = correct clean and under every attack); "
              f"each defence fine-tuned from the bundled baseline for {s['iters']} iterations "
              f"({s['machine']}, {s['threads']} thread(s)"
              + (f"; {s['jobs_at_once']} such jobs side by side on {s['cores']} cores, so the CPU-s include their "
                 f"contention" if s.get("jobs_at_once", 1) > 1 else "")
              + "); the plot: docs/robustness/frontier.png."]
    return "\n".join(lines) + "\n"


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, eps in zip(axes, ("1", "2")):
        for r in results["variants"] + results.get("longer", []):
            masked, longer = r["masking_suspected"], r in results.get("longer", [])
            ax.scatter(100 * r["worst"][eps], 100 * r["clean"], s=40, marker="s" if longer else "o",
                       facecolors="none" if masked else "C0", edgecolors="C3" if masked else "C0")
            label = r["name"] + (f" ({r['training']['iters']} it.)" if longer else "") + (" (masked)" if masked else "")
            ax.annotate(label, (100 * r["worst"][eps], 100 * r["clean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(f"worst-case accuracy at eps {eps} (%)")
        ax.set_title(f"eps = {eps} grey level{'s' if eps != '1' else ''}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clean accuracy (%)")
    fig.suptitle("Defences fine-tuned from the bundled baseline (hollow red: gradient masking suspected; "
                 "squares: trained longer)" if results.get("longer") else
                 "Defences fine-tuned from the bundled baseline (hollow red: gradient masking suspected)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--test", type=Path)
    ap.add_argument("--val", type=Path, default=None, help="validation folder (default DATA/val)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all, and the references)")
    ap.add_argument("--iters", type=int, default=None,
                    help="training iterations per variant (default 1000; with --render --work, the recorded setup's)")
    ap.add_argument("--render", action="store_true", help="only render frontier.md and frontier.png")
    ap.add_argument("--jobs-at-once", type=int, default=1,
                    help="with --render --work: how many training/eval jobs ran side by side (recorded in the setup)")
    ap.add_argument("--longer", action="store_true",
                    help="with --render --work: WORK holds runs of other --iters (training length); their records go "
                         "to frontier.json's `longer` list, keyed by name and iterations, not to the frontier")
    args = ap.parse_args()
    if not args.render:
        if not (args.data and args.test and args.work):
            ap.error("--data, --test and --work are needed (or --render)")
        args.work.mkdir(parents=True, exist_ok=True)
        names = args.only.split(",") if args.only else [*REFERENCES, *VARIANTS]
        unknown = [n for n in names if n not in REFERENCES and n not in VARIANTS]
        if unknown:
            ap.error(f"--only: unknown variant(s) {', '.join(unknown)}; choose from "
                     f"{', '.join([*REFERENCES, *VARIANTS])}")
        for name in names:
            rec = run_variant(name, args, args.data, args.test, args.work, args.iters or 1000)
            (args.work / f"{name}.record.json").write_text(json.dumps(rec, indent=1))
            print(f"{name}: clean {pct(rec['clean'])}, worst case "
                  + ", ".join(f"eps {e} {pct(v)}" for e, v in rec["worst"].items())
                  + (f"; masking suspected ({', '.join(rec['masking_flags'])})" if rec["masking_suspected"] else ""),
                  flush=True)
        return
    if args.work and args.longer:       # runs of another length: beside the frontier, never in place of its rows
        results = json.loads(RESULTS.read_text())
        longer = {(r["name"], r["training"]["iters"]): r for r in results.get("longer", [])}
        for n in VARIANTS:
            if (args.work / f"{n}.record.json").is_file():
                rec = json.loads((args.work / f"{n}.record.json").read_text())
                longer[(n, rec["training"]["iters"])] = rec
        results["longer"] = [longer[k] for k in sorted(longer, key=lambda k: (list(VARIANTS).index(k[0]), k[1]))]
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    elif args.work:            # collect the finished variants' records into frontier.json
        import platform

        import torch

        order = [*REFERENCES, *VARIANTS]
        # WORK's records replace those of the same name in frontier.json; the others are kept, so a run of a few
        # variants (--only) adds to the frontier instead of dropping what earlier runs measured.  No record in WORK:
        # frontier.json is left as it is (its setup too).
        before = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"variants": []}
        found = {n: json.loads((args.work / f"{n}.record.json").read_text()) for n in order
                 if (args.work / f"{n}.record.json").is_file()}
        if found:
            kept = {r["name"]: r for r in before["variants"]}
            kept.update(found)
            recs = [kept[n] for n in order if n in kept]
            prior = before.get("setup", {})
            threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else \
                torch.get_num_threads()
            setup = {"test": args.test.name if args.test else prior.get("test", ""),
                     "iters": args.iters or prior.get("iters", 1000), "threads": threads,
                     "machine": platform.processor() or platform.machine(), "jobs_at_once": args.jobs_at_once,
                     "cores": os.cpu_count()}
            RESULTS.write_text(json.dumps({"setup": setup, "variants": recs,
                                           **({"longer": before["longer"]} if "longer" in before else {})},
                                          indent=1) + "\n")
    results = json.loads(RESULTS.read_text())
    table = render(results)
    TABLE.write_text(table)
    plot(results)
    for page in PAGES:                     # the same block in docs/robustness.md and the README
        text = page.read_text()
        head, rest = text.split(BEGIN, 1)
        marker, rest = rest.split("-->", 1)
        page.write_text(f"{head}{BEGIN}{marker}-->\n{table}{END}{rest.split(END, 1)[1]}")
    print(table)


if __name__ == "__main__":
    main()

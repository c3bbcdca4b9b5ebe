"""Regenerate the "Trustworthy evaluation" example (docs/robustness.md) from the bundled models.

    python docs/trust/make_example.py [--count 100] [--seed 3] [--data DIR] [--stages eval,cross,grid,render]

Synthesizes DIR (default: a temporary folder) with `recapfast synth --size 64 --count N --seed S`, then runs the
stages and writes their results here:

- eval:   `recapfast eval DIR --model M --attack auto --eps 1,2,3,4,5` for M = baseline, robust (the CLI defaults:
          APGD 100 steps, Square 1000 queries) -> example_M.json, example_M.md
- cross:  `recapfast transfer DIR --source baseline --target robust,bayar,meso4 --cross --attack fgsm,apgd --eps 2`
          -> example_cross.json, example_cross.md
- grid:   APGD (100 and 10 steps) on every second patch at eps 1 and 2: on the uint8 grid, in float, and in
          float rounded to uint8 afterwards, with per-patch cross-entropy -> example_grid.json
- render: example.md (the tables and the masking verdicts) from the files above, copied between the
          trust-example markers of docs/robustness.md (tests/test_readme.py checks they agree); printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "robustness.md"
BEGIN, END = "<!-- trust-example:begin", "<!-- trust-example:end -->"


def page_block(page: str) -> str:
    """The example as the page holds it (between the markers, without them)."""
    return page.split(BEGIN, 1)[1].split("-->", 1)[1].split(END, 1)[0].strip() + "\n"


def replace_block(page: str, text: str) -> str:
    head, rest = page.split(BEGIN, 1)
    marker, rest = rest.split("-->", 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}{marker}-->\n{text.strip()}\n{END}{tail}"
MODELS = ("baseline", "robust")
GRID_RUNS = ((1, 100), (2, 100), (1, 10), (2, 10))      # (eps, APGD steps)


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def run(*args) -> None:
    subprocess.run([sys.executable, "-m", "recapfast", *map(str, args)], check=True)


def grid_vs_float(data: Path) -> dict:
    import torch

    import recapfast as rf
    from recapfast.attacks.universal import load_patches

    x = load_patches(data, 64)
    n = x.shape[0] // 2
    y = torch.tensor([0] * n + [1] * n)[::2]
    x = x[::2]
    import torch.nn.functional as F

    rows = []
    for name in MODELS:
        model = rf.load_model(name)
        for eps, steps in GRID_RUNS:
            grid = rf.apgd(model, x, y, eps, steps=steps)
            flt = rf.apgd(model, x, y, eps, steps=steps, quantize=False)
            with torch.no_grad():
                logits = {"grid": model(grid), "float": model(flt), "rounded": model(flt.round())}
            ok = {k: v.argmax(1) == y for k, v in logits.items()}
            ce = {k: F.cross_entropy(v, y, reduction="none") for k, v in logits.items()}
            stronger = ~ok["grid"] | (ce["grid"] >= ce["rounded"] - 1e-5)
            rows.append({"model": name, "eps": eps, "steps": steps, "patches": len(y),
                         "accuracy_grid": float(ok["grid"].float().mean()),
                         "accuracy_float": float(ok["float"].float().mean()),
                         "accuracy_float_rounded": float(ok["rounded"].float().mean()),
                         "fooled_in_float_not_after_rounding": int((~ok["float"] & ok["rounded"]).sum()),
                         "grid_at_least_as_strong": int(stronger.sum()),
                         "mean_ce_grid": float(ce["grid"].mean()), "mean_ce_float_rounded": float(ce["rounded"].mean())})
    return {"rows": rows}


def table(results: dict) -> str:
    eps = results[MODELS[0]]["eps"]
    lines = ["| model | clean | attack | " + " | ".join(f"eps={e:g}" for e in eps) + " |",
             "|---|---|---|" + "---|" * len(eps)]
    for name, r in results.items():
        order = (r["worst_case"].get("cascade") or {}).get("order", [])
        label = {a: " > ".join(o.upper() for o in order[:order.index(a) + 1]) if a in order[1:] else a.upper()
                 for a in r["attacks"]}
        rows = [(label[a], [c for c in r["cells"] if c["attack"] == a]) for a in r["attacks"]]
        rows.append(("worst case", r["worst_case"]["cells"]))
        for i, (label, cells) in enumerate(rows):
            head = f"| {name} | {pct(r['clean_accuracy'])} |" if i == 0 else "| | |"
            lines.append(f"{head} {label} | " + " | ".join(pct(c["accuracy"]) for c in cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict) -> str:
    out = []
    for name, r in results.items():
        flagged = [c for c in r["masking"]["checks"] if c["status"] == "flagged"]
        if not flagged:
            out.append(f"- `{name}`: no gradient-masking check flagged.")
            continue
        out.append(f"- `{name}`: **gradient masking suspected**:")
        for c in flagged:
            for ev in c["evidence"][:3]:
                if "lower" in ev:
                    out.append(f"  - {c['check']}: {ev['lower']} {pct(ev['accuracy_lower'])} < {ev['higher']} "
                               f"{pct(ev['accuracy_higher'])} ({ev['points']:+.1f} points; "
                               f"{ev['correct_only_under_higher']} vs {ev['correct_only_under_lower']} patches, "
                               f"p = {ev['p_value']:.1g})")
                else:
                    out.append(f"  - {c['check']}: {ev}")
            if len(c["evidence"]) > 3:
                out.append(f"  - ... {len(c['evidence']) - 3} more comparison(s) in example_{name}.json")
    return "\n".join(out)


def grid_table(grid: dict) -> str:
    lines = ["| model | eps | APGD steps | on the uint8 grid | in float | float rounded afterwards | fooled in float, "
             "not after rounding | grid at least as strong (fooled, or CE >=) | mean CE: grid / rounded float |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['eps']:g} | {r['steps']} | {pct(r['accuracy_grid'])} | {pct(r['accuracy_float'])} | "
              f"{pct(r['accuracy_float_rounded'])} | {r['fooled_in_float_not_after_rounding']} | "
              f"{r['grid_at_least_as_strong']}/{r['patches']} | {r['mean_ce_grid']:.3f} / "
              f"{r['mean_ce_float_rounded']:.3f} |" for r in grid["rows"]]
    return "\n".join(lines)


def render(count: int, seed: int) -> str:
    results = {name: json.loads((HERE / f"example_{name}.json").read_text()) for name in MODELS}
    patches = results[MODELS[0]]["patches"]
    text = (f"`recapfast synth DIR --size 64 --count {count} --seed {seed}` ({patches} patches), then "
            f"`recapfast eval DIR --model M --attack auto --eps 1,2,3,4,5` (APGD 100 steps, Square 1000 queries); "
            f"{platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"{time.strftime('%Y-%m-%d')}. `auto` is a cascade: the FGSM row is stand-alone, `FGSM > APGD` is what "
            f"survives FGSM then APGD, `FGSM > APGD > SQUARE` all three (= the worst case).\n\n{table(results)}\n\n"
            f"{verdicts(results)}\n")
    if (HERE / "example_cross.md").is_file():
        cross = (HERE / "example_cross.md").read_text().split("\n", 2)[2].strip()
        text += f"\nCross-model transfer (`--cross`, APGD 100 steps) on the same patches:\n\n{cross}\n"
    if (HERE / "example_grid.json").is_file():
        grid = json.loads((HERE / "example_grid.json").read_text())
        text += (f"\nWhat the uint8 grid changes: APGD on every second patch ({grid['rows'][0]['patches']}), on the "
                 f"grid (default), with `--no-quantize`, and that float result rounded to uint8 as a PNG would hold "
                 f"it (robust accuracy; per patch, whether the grid attack fooled the model or ended with a "
                 f"cross-entropy at least that of the rounded float image):\n\n{grid_table(grid)}\n")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--data", type=Path)
    p.add_argument("--stages", default="eval,cross,grid,render")
    a = p.parse_args()
    stages = set(a.stages.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or Path(tmp) / "data"
        if stages - {"render"} and not data.exists():
            run("synth", data, "--size", 64, "--count", a.count, "--seed", a.seed)
        if "eval" in stages:
            for name in MODELS:
                run("eval", data, "--model", name, "--attack", "auto", "--eps", "1,2,3,4,5", "--quiet", "--force",
                    "--json", HERE / f"example_{name}.json", "--md", HERE / f"example_{name}.md")
        if "cross" in stages:
            run("transfer", data, "--source", "baseline", "--target", "robust,bayar,meso4", "--cross", "--attack",
                "fgsm,apgd", "--eps", 2, "--quiet", "--force", "--json", HERE / "example_cross.json",
                "--md", HERE / "example_cross.md")
        if "grid" in stages:
            (HERE / "example_grid.json").write_text(json.dumps(grid_vs_float(data), indent=2))
    if "render" in stages:
        text = render(a.count, a.seed)
        (HERE / "example.md").write_text(text)
        PAGE.write_text(replace_block(PAGE.read_text(), text))
        print(text)


if __name__ == "__main__":
    main()

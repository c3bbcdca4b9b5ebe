"""Figures of a reproduction: accuracy-vs-eps curves and the Fig. 2/5-style example grid.

matplotlib comes from the ``plot`` extra and is imported only when a figure is drawn (Agg backend,
no display needed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from recapfast.io import atomic
from recapfast.errors import UserError

CLASS_LABELS = ("original", "recaptured")
_MODEL_TITLES = {"baseline": "Yang (baseline)", "robust": "proposed (robust)"}
_ATTACK_STYLE = {"fgsm": ("FGSM", "tab:red"), "llcm": ("LLCM", "tab:blue")}


class PlotError(UserError):
    """matplotlib is missing."""


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise PlotError("plots need matplotlib: pip install matplotlib (the same as the plot extra: from a clone's "
                        "root, pip install '.[plot]')") from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def panel_title(model: str, size: int, worst: dict | None = None) -> str:
    """The title of a model's panel: marked "(masking suspected: <checks>)" when the worst stage's gradient-masking
    checks of that model flagged (recapfast.reporting.trust.masking_mark), unmarked otherwise."""
    from recapfast.reporting.trust import masking_mark

    mark = masking_mark(((worst or {}).get("models") or {}).get(model, {}).get("masking"))
    return f"{_MODEL_TITLES[model]}, {size}x{size}" + (f"\n{mark.strip()}" if mark else "")


def accuracy_vs_eps(size: int, evals: dict, paper_clean: dict, paper_adv: dict, eps: Sequence[float], path,
                    worst: dict | None = None) -> Path:
    """One PNG per size: a panel per model; FGSM and LLCM accuracy vs eps (ours solid, paper dashed),
    clean accuracy as a horizontal line (eps 0 is plotted as the clean point).  ``worst``: the reproduce
    worst stage's record; adds each model's worst-case curve (on that stage's patches) and marks a model whose
    gradient-masking checks flagged in its panel title and its worst-case legend entry.  The panel titles
    are also written into the PNG's "Description" text chunk."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    xs = [0.0] + [float(e) for e in eps]
    titles = []
    for ax, model in zip(axes, ("baseline", "robust")):
        ev = evals[model]
        clean = 100 * ev["clean_accuracy"]
        for attack, (label, color) in _ATTACK_STYLE.items():
            ax.plot(xs, [clean] + [100 * a for a in ev[attack]["accuracy"]], "-o", color=color,
                    label=f"{label} (ours)")
            paper = paper_adv[model].get(size, {}).get(attack)
            if paper is not None:
                ax.plot(xs, [100 * paper_clean[model][size]] + [100 * a for a in paper], "--", color=color,
                        marker="x", alpha=0.6, label=f"{label} (paper)")
        w = ((worst or {}).get("models") or {}).get(model)
        if w is not None:
            from recapfast.reporting.trust import masking_mark

            ax.plot(xs, [100 * w["clean"]] + [100 * a for a in w["worst"]], "-s", color="black",
                    label=f"worst case, auto+LLCM ({w['patches']} patches){masking_mark(w.get('masking'))}")
        ax.axhline(50, color="grey", lw=0.8, ls=":", label="chance (50%)")
        titles.append(panel_title(model, size, worst))
        ax.set_title(titles[-1], **({"fontsize": 9} if "\n" in titles[-1] else {}))
        ax.set_xlabel("eps (grey levels; 0 = clean)")
        ax.set_xticks(xs)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("detection accuracy on the test split (%)")
    fig.suptitle(f"Accuracy under FGSM / LLCM vs eps, {size}x{size} patches (Experiments 1 and 2)")
    fig.tight_layout()
    meta = {"Description": " | ".join(t.replace("\n", " ") for t in titles)}
    atomic.write_file(path, writer=lambda fh: fig.savefig(fh, format="png", dpi=90, metadata=meta))
    plt.close(fig)
    return path


def example_grid(examples: dict, size: int, path) -> Path:
    """Fig. 2/5-style grid: per model, per patch (original, recaptured), per attack one row:
    clean, then eps in ``examples['eps']``; each tile titled true / predicted label and probability."""
    import numpy as np

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eps = examples["eps"]
    labels = examples["labels"]
    rows = [(m, b, a) for m in examples["models"] for b in range(len(labels)) for a in ("fgsm", "llcm")]
    ncols = 1 + len(eps)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols + 1.2, 2.05 * len(rows)), squeeze=False)
    short = {0: "orig", 1: "recap"}
    for r, (model, b, attack) in enumerate(rows):
        entry = examples["models"][model]
        tiles = [(examples["clean"][b], "clean", entry["clean"]["pred"][b], entry["clean"]["prob"][b])]
        for j, e in enumerate(eps):
            tiles.append((entry[attack]["images"][j][b], f"{attack.upper()} eps {e:g}",
                          entry[attack]["pred"][j][b], entry[attack]["prob"][j][b]))
        for c, (img, what, pred, prob) in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(np.transpose(np.asarray(img), (1, 2, 0)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            wrong = pred != labels[b]
            ax.set_title(f"{what}\ntrue {short[labels[b]]}, pred {short[pred]}\np({short[pred]})={prob:.2f}", fontsize=7.5,
                         color="tab:red" if wrong else "black")
        axes[r][0].set_ylabel(f"{_MODEL_TITLES[model]}\n{CLASS_LABELS[labels[b]]} patch", fontsize=8)
    fig.suptitle(f"Clean and adversarial test patches ({size}x{size}); red title = misclassified", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    atomic.write_file(path, writer=lambda fh: fig.savefig(fh, format="png", dpi=80))
    plt.close(fig)
    return path

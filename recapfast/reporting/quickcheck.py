"""Markdown for the demo's worst-case check (``recapfast.engine.quickcheck``): what ran, the FGSM row beside
the worst case per eps, and the masking verdict with the names of the checks that flagged."""
from __future__ import annotations

from recapfast.reporting.tables import _table, eps_label, pct
from recapfast.reporting.trust import _TITLES


def quickcheck_markdown(result, total_patches: int) -> str:
    s = result.attack_settings
    fgsm = {c.eps: c for c in result.cells if c.attack == "fgsm"}
    worst = result.worst_case["cells"]
    rows = [[eps_label(w["eps"]), pct(result.clean_accuracy), pct(fgsm[w["eps"]].accuracy), pct(w["accuracy"]),
             f"{100 * (fgsm[w['eps']].accuracy - w['accuracy']):+.1f}"] for w in worst]
    lines = [f"### Worst-case check: {result.model}", "",
             f"{result.patches} of the {total_patches} patches (the first {result.patches_per_class[0]} of each "
             f"class); FGSM, then APGD-CE ({s['apgd']['steps']} steps, {s['apgd']['restarts']} restart) on FGSM's "
             f"survivors, then Square ({s['square']['queries']} queries) on both's; on the uint8 grid; "
             f"{result.seconds:.1f} s. The full evaluation: `recapfast eval DATA --attack auto`.", "",
             _table(["eps", "clean", "FGSM", "worst case", "FGSM - worst (points)"], rows), ""]
    m = result.masking
    flagged = [c["check"] for c in m["checks"] if c["status"] == "flagged"]
    if flagged:
        lines.append(f"**Gradient masking suspected** for {result.model}: "
                     + "; ".join(_TITLES.get(c, c) for c in flagged)
                     + ". Its FGSM and LLCM rows above are not evidence of robustness.")
    else:
        lines.append(f"No gradient-masking check flagged for {result.model} "
                     f"({m['multiplicity']['comparisons']} comparisons).")
    d = m.get("degenerate")
    if d and d["status"] == "flagged":
        lines.append(f"**Degenerate model**: {'; '.join(d['reasons'])}.")
    return "\n".join(lines) + "\n"


__all__ = ["quickcheck_markdown"]

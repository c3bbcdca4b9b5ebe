"""Markdown for the trust parts of an eval result: masking checks, detection metrics, JPEG survival."""
from __future__ import annotations

from recapfast.reporting.tables import _table, eps_label, num, pct

_MAX_EVIDENCE = 8


def _evidence_line(check: str, ev: dict) -> str:
    if check == "zero_or_nonfinite_gradients":
        return (f"{ev['zero_gradient_patches']} patch(es) with an all-zero and {ev['nonfinite_gradient_patches']} with "
                f"a non-finite input gradient at the clean patch, of {ev['patches']} ({pct(ev['share'])})")
    line = (f"{ev['lower']} {pct(ev['accuracy_lower'])} < {ev['higher']} {pct(ev['accuracy_higher'])} "
            f"({ev['points']:+.1f} points): {ev['correct_only_under_higher']} patch(es) correct only under "
            f"{ev['higher']}, {ev['correct_only_under_lower']} only under {ev['lower']} (sign test p = "
            f"{ev['p_value']:.2g})")
    if "fooled_only_by_black_box" in ev:
        line += f"; {ev['fooled_only_by_black_box']} patch(es) fooled by Square and by no gradient attack"
    return line


_TITLES = {
    "single_step_beats_iterative": "single-step attack beats its iterative counterpart",
    "accuracy_rises_with_eps": "accuracy rises with eps",
    "black_box_beats_white_box": "black-box Square beats the gradient attacks",
    "zero_or_nonfinite_gradients": "zero or non-finite gradients",
    "worst_case_rises_with_eps": "worst case rises with eps",
}


def masking_flags(masking: dict | None) -> list[str]:
    """The readable titles of the flagged gradient-masking checks of an eval's ``masking`` dict (the degenerate-model
    check included); [] when none flagged or nothing was checked."""
    if not masking:
        return []
    flags = [_TITLES.get(c["check"], c["check"]) for c in masking.get("checks", []) if c["status"] == "flagged"]
    if (masking.get("degenerate") or {}).get("status") == "flagged":
        flags.append("degenerate model")
    return flags


def masking_mark(masking: dict | None) -> str:
    """The mark " (masking suspected: <checks>)" of a model whose checks flagged; "" otherwise."""
    flags = masking_flags(masking)
    return f" (masking suspected: {', '.join(flags)})" if flags else ""


def cascade_markdown(result) -> list[str]:
    """Which attack fooled each patch first, per eps, in the ``auto`` cascade."""
    c = result.worst_case["cascade"]
    order = " > ".join(a.upper() for a in c["order"])
    rows = [[eps_label(r["eps"]), str(r["clean"]), str(r["fgsm"]), str(r["apgd"]), str(r["square"]), str(r["robust"]),
             str(r["inherited_from_smaller_eps"])] for r in c["first_fooled_by"]]
    return [f"`auto` ran as a cascade ({order}): each attack only on the patches every earlier one failed to "
            "fool, a patch fooled at a smaller eps counted as fooled at every larger one; so the APGD and SQUARE "
            "rows above are cumulative. First fooled by (patches):", "",
            _table(["eps", "wrong clean", "FGSM", "APGD", "Square", "robust", "of which at a smaller eps"], rows),
            "", "Stand-alone rows of each attack: `--attack fgsm,apgd,square`.", ""]


def masking_markdown(masking: dict) -> list[str]:
    t = masking["thresholds"]
    flagged = [c for c in masking["checks"] if c["status"] == "flagged"]
    head = (f"**Gradient masking suspected** ({len(flagged)} check(s) flagged): the attack numbers above may "
            "overstate robustness." if flagged else "No gradient-masking check flagged.")
    parts = ["Gradient-masking checks", "", head, ""]
    for c in masking["checks"]:
        title = _TITLES.get(c["check"], c["check"])
        if c["status"] == "not run":
            parts.append(f"- {title}: not run ({c['reason']})")
            continue
        parts.append(f"- {title}: **FLAGGED**" if c["status"] == "flagged" else f"- {title}: passed")
        for ev in c["evidence"][:_MAX_EVIDENCE]:
            parts.append(f"  - {_evidence_line(c['check'], ev)}")
        if len(c["evidence"]) > _MAX_EVIDENCE:
            parts.append(f"  - ... and {len(c['evidence']) - _MAX_EVIDENCE} more (see --json)")
    parts += ["", f"A comparison flags when the accuracy difference is >= {t['min_points']:g} points of all patches "
                  f"and the one-sided sign test on the patches that differ gives p < {t['alpha']:g}; gradients are "
                  "flagged when any patch has an all-zero or non-finite one.", ""]
    m = masking.get("multiplicity")
    if m:
        parts += [f"Multiplicity: the checks ran {m['comparisons']} sign test(s) at p < {m['alpha_per_comparison']:g} "
                  f"each, so by Bonferroni the chance that any flags by noise alone is at most "
                  f"{m['bonferroni_bound']:.3g}; family-wise at {m['family_wise_alpha']:g} a test needs p < "
                  f"{m['family_wise_threshold']:.3g}, which {m['flagged_below_family_wise_threshold']} of the "
                  f"{m['flagged_comparisons']} flagged comparison(s) meet.", ""]
    d = masking.get("degenerate")
    if d and d["status"] == "flagged":
        parts += [f"**Degenerate model**: {'; '.join(d['reasons'])}. Its attack rows say nothing about robustness: "
                  "a model that cannot tell the classes apart cannot be fooled.", ""]
    elif d and d["status"] == "passed":
        parts += ["Degenerate-model check passed (both classes predicted; clean ROC AUC "
                  + (f"{d['clean_auc']:.3f})." if d["clean_auc"] is not None else "not computed)."), ""]
    return parts


def detection_markdown(detection: dict) -> list[str]:
    rows = []
    for c in [detection["clean"]] + detection["cells"]:
        label = "clean" if c["attack"] == "clean" else f"{c['attack'].upper()} eps={eps_label(c['eps'])}"
        tpr = next(v for k, v in c.items() if k.startswith("tpr_at_"))
        (tn, fp), (fn, tp) = c["confusion"][0][:2], c["confusion"][1][:2]
        rows.append([label, num(c["auc"], 4), pct(c["eer"]), pct(tpr), str(tn), str(fp), str(fn), str(tp)])
    return ["Detection metrics (positive class: recaptured; score: log-odds of p(recaptured); confusion at the "
            "argmax decision)", "",
            _table(["cell", "ROC AUC", "EER", "TPR @ 1% FPR", "TN", "FP", "FN", "TP"], rows), ""]


def jpeg_markdown(result) -> list[str]:
    rows = []
    for block in result.jpeg:
        cells = {(c["attack"], c["eps"]): c for c in block["cells"]}
        clean = cells[("clean", 0.0)]
        rows.append([f"JPEG {block['quality']}", "clean", pct(clean["accuracy"])] + [""] * (len(result.eps) - 1))
        for name in result.attacks:
            row = [f"JPEG {block['quality']}", name.upper()]
            for e in result.eps:
                c = cells[(name, e)]
                row.append(f"{pct(c['accuracy'])} (survived {c['still_flipped']}/{c['flipped']})")
            rows.append(row)
    return ["JPEG survival: accuracy after a Pillow JPEG round trip of each image (survived: attack flips that "
            "are still wrong after JPEG / flips before it)", "",
            _table(["quality", "method"] + [f"eps={eps_label(e)}" for e in result.eps], rows), ""]


def trust_markdown(result) -> list[str]:
    parts = []
    if getattr(result, "attack_settings", None):
        s = result.attack_settings
        bits = []
        if "apgd" in s:
            a = s["apgd"]
            bits.append(f"APGD-CE {a['steps']} steps, {a['restarts']} restart(s), rho {a['rho']:g}, seed {a['seed']}")
        if "square" in s:
            q = s["square"]
            bits.append(f"Square {q['queries']} queries, {q['restarts']} restart(s), p_init {q['p_init']:g}, "
                        f"seed {q['seed']}")
        parts += ["; ".join(bits) + " (per eps, on the uint8 grid)" if bits else "", ""]
    if getattr(result, "worst_case", None):
        parts += [f"Worst case: a patch counts as robust at an eps only when it is correct clean and survives every "
                  f"attack of the run ({', '.join(a.upper() for a in result.worst_case['attacks'])}).", ""]
        if result.worst_case.get("cascade"):
            parts += cascade_markdown(result)
    if getattr(result, "masking", None):
        parts += masking_markdown(result.masking)
    if getattr(result, "detection", None):
        parts += detection_markdown(result.detection)
    if getattr(result, "jpeg", None):
        parts += jpeg_markdown(result)
    return parts


__all__ = ["trust_markdown", "masking_markdown", "masking_flags", "masking_mark", "cascade_markdown", "detection_markdown", "jpeg_markdown"]

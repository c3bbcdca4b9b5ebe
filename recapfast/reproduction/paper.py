"""Zhao et al. 2018 (arXiv 1803.11157), section 4: the protocol constants and numbers of Tables 1-3 that
``recapfast reproduce`` compares against, and the paper's qualitative findings (a)-(d) checked on our numbers."""
from __future__ import annotations

import math
from typing import Sequence

from recapfast.reporting.tables import pct

EPS = (1.0, 2.0, 3.0, 4.0, 5.0)
GRID_EPS = (1.0, 5.0, 10.0, 15.0)
ATTACKS = ("fgsm", "llcm")
MODELS = ("baseline", "robust")
MODEL_TITLES = {"baseline": "Yang", "robust": "Prop"}
PAPER_SIZES = (64, 128, 256, 512)

# Zhao et al. 2018, Tables 1-3 (fractions).  The paper labels the LLCM rows "TGSM".
PAPER_CLEAN = {
    "baseline": {64: 0.967, 128: 0.982, 256: 0.991, 512: 0.994},
    "robust": {64: 0.966, 128: 0.981, 256: 0.985, 512: 0.990},
}
PAPER_ADVERSARIAL = {
    "baseline": {
        64: {"fgsm": [0.028, 0.009, 0.005, 0.006, 0.026], "llcm": [0.075, 0.057, 0.052, 0.053, 0.069]},
        128: {"fgsm": [0.011, 0.002, 0.014, 0.049, 0.065], "llcm": [0.029, 0.020, 0.031, 0.061, 0.075]},
        256: {"fgsm": [0.026, 0.036, 0.054, 0.075, 0.099], "llcm": [0.039, 0.049, 0.066, 0.086, 0.111]},
        512: {"fgsm": [0.033, 0.016, 0.009, 0.007, 0.010], "llcm": [0.046, 0.028, 0.022, 0.019, 0.021]},
    },
    "robust": {
        64: {"fgsm": [0.936, 0.945, 0.961, 0.963, 0.959], "llcm": [0.900, 0.916, 0.930, 0.933, 0.930]},
        128: {"fgsm": [0.959, 0.971, 0.978, 0.984, 0.987], "llcm": [0.945, 0.956, 0.962, 0.968, 0.971]},
        256: {"fgsm": [0.974, 0.985, 0.988, 0.989, 0.986], "llcm": [0.943, 0.951, 0.953, 0.954, 0.952]},
        512: {"fgsm": [0.992, 0.993, 0.993, 0.994, 0.993], "llcm": [0.981, 0.982, 0.983, 0.983, 0.982]},
    },
}

# Rules of the findings (fractions; stated verbatim in the report).
LOSS_FRACTION = 0.5        # (a) adversarial accuracy <= this x clean accuracy
TIE_TOLERANCE = 0.01       # (b), (d) comparisons tolerate 1 point of sampling noise
CLEAN_DROP_MAX = 0.03      # (c) robust clean accuracy >= baseline clean - 3 points
RECOVERY_MIN = 0.5         # (c) robust closes >= half of the gap the attack opened on the baseline


def findings(numbers: dict, eps: Sequence[float] = EPS, measured: dict | None = None) -> dict:
    """The paper's qualitative findings (a)-(d) for one size, computed from our numbers.

    ``numbers[model] = {"clean": acc, "fgsm": [acc per eps], "llcm": [...]}`` for model in
    ("baseline", "robust"), accuracies as fractions.  ``measured[model]``: the run's measurements
    (``recapfast.engine.flipdist.measure``); a finding that does not hold gets an ``explanation`` made only of
    those measured quantities (None without measurements).
    Returns {letter: {holds, rule, detail, explanation}}.
    """
    from recapfast.engine.flipdist import agreement_sentence, flip_sentence

    mb = (measured or {}).get("baseline")
    mr = (measured or {}).get("robust")
    b, r = numbers["baseline"], numbers["robust"]
    e = [f"{x:g}" for x in eps]
    out = {}

    # (a) the baseline loses most of its accuracy under both attacks at every eps.
    limit = LOSS_FRACTION * b["clean"]
    worst = max(((b[a][i], a, e[i]) for a in ATTACKS for i in range(len(eps))), key=lambda t: t[0])
    holds = worst[0] <= limit
    out["a"] = {
        "holds": holds,
        "rule": f"every baseline FGSM and LLCM accuracy at eps {e[0]}..{e[-1]} is <= {LOSS_FRACTION:g} x its clean "
                f"accuracy ({pct(b['clean'])} -> limit {pct(limit)})",
        "detail": f"highest adversarial accuracy {pct(worst[0])} ({worst[1].upper()}, eps {worst[2]})",
        "explanation": None if holds or mb is None else (
            f"{flip_sentence(mb)}; {agreement_sentence(mb, e.index(worst[2]))}"),
    }

    # (b) FGSM hurts at least as much as LLCM (baseline).
    gaps = [b["fgsm"][i] - b["llcm"][i] for i in range(len(eps))]
    bad = [e[i] for i, g in enumerate(gaps) if g > TIE_TOLERANCE]
    holds = not bad
    out["b"] = {
        "holds": holds,
        "rule": f"at every eps, baseline FGSM accuracy <= baseline LLCM accuracy + {100 * TIE_TOLERANCE:g} point",
        "detail": f"FGSM - LLCM accuracy per eps: {', '.join(f'{100 * g:+.1f}' for g in gaps)} points "
                  f"(mean {100 * sum(gaps) / len(gaps):+.1f})",
        "explanation": None if holds or mb is None else "; ".join(agreement_sentence(mb, e.index(k)) for k in bad),
    }

    # (c) the robust model keeps clean accuracy and recovers most of the adversarial accuracy.
    drop = b["clean"] - r["clean"]
    recov = []
    for a in ATTACKS:
        for i in range(len(eps)):
            lost = b["clean"] - b[a][i]
            gained = r[a][i] - b[a][i]
            recov.append((gained / lost if lost > 1e-9 else float("nan"), a, e[i]))
    finite = [t for t in recov if not math.isnan(t[0])]
    least = min(finite, key=lambda t: t[0]) if finite else (float("nan"), "-", "-")
    clean_ok = drop <= CLEAN_DROP_MAX
    recov_ok = bool(finite) and least[0] >= RECOVERY_MIN
    holds = clean_ok and recov_ok
    why = [flip_sentence(m) + f" ({name})" for name, m in (("baseline", mb), ("robust", mr)) if m is not None]
    out["c"] = {
        "holds": holds,
        "rule": f"robust clean accuracy >= baseline clean - {100 * CLEAN_DROP_MAX:g} points, and in every (attack, eps) "
                f"cell the robust model closes >= {100 * RECOVERY_MIN:g}% of the gap the attack opened on the "
                f"baseline: (robust_adv - baseline_adv) / (baseline_clean - baseline_adv)",
        "detail": f"clean {pct(r['clean'])} vs {pct(b['clean'])} ({-100 * drop:+.1f} points); recovery min "
                  f"{100 * least[0]:.0f}% ({least[1].upper()}, eps {least[2]}), mean "
                  f"{100 * sum(t[0] for t in finite) / max(len(finite), 1):.0f}%",
        "explanation": "; ".join(why) if why and not holds else None,
    }

    # (d) the robust model resists FGSM better than LLCM (it was trained on FGSM only).
    gaps = [r["fgsm"][i] - r["llcm"][i] for i in range(len(eps))]
    mean_gap = sum(gaps) / len(gaps)
    bad = [e[i] for i, g in enumerate(gaps) if g < -TIE_TOLERANCE]
    holds = not bad and mean_gap > 0
    out["d"] = {
        "holds": holds,
        "rule": f"at every eps, robust FGSM accuracy >= robust LLCM accuracy - {100 * TIE_TOLERANCE:g} point, and "
                f"higher on average over eps",
        "detail": f"FGSM - LLCM accuracy per eps: {', '.join(f'{100 * g:+.1f}' for g in gaps)} points "
                  f"(mean {100 * mean_gap:+.1f})",
        "explanation": None if holds or mr is None else agreement_sentence(mr, gaps.index(min(gaps))),
    }
    return out



def _eps_list(cells) -> str:
    return ", ".join(f"{c['eps']:g}" for c in cells)


# The worst case of a reproduce run: `recapfast eval --attack auto,llcm` on the worst stage's patches.
WORST_ATTACKS = ("fgsm", "llcm", "apgd", "square")


def worst_finding(worst: dict, eps: Sequence[float] = EPS, c_holds: bool | None = None) -> dict:
    """Finding (c) checked against the worst case, from the worst stage's own numbers (one set of patches).

    ``worst["models"][model]`` = {"clean": acc, "fgsm": [...], "llcm": [...], "worst": [...]} on the same
    patches.  Per eps, the recovery (robust_adv - baseline_adv) / (baseline_clean - baseline_adv) of FGSM, LLCM
    and the worst case; ``only_paper_attacks``: the eps where both FGSM and LLCM recover >= RECOVERY_MIN but
    the worst case does not.  ``c_holds``: finding (c) on the eval stage's numbers, for the verdict sentence.
    Returns {holds, rule, per_eps, only_paper_attacks, sentence}; every sentence states compared numbers.
    """
    b, r = worst["models"]["baseline"], worst["models"]["robust"]
    n = worst["patches"]

    def recovery(key: str, i: int) -> float:
        lost = b["clean"] - b[key][i]
        return (r[key][i] - b[key][i]) / lost if lost > 1e-9 else float("nan")

    ok = lambda v: math.isnan(v) or v >= RECOVERY_MIN  # noqa: E731  (nan: the attack cost the baseline nothing)
    per_eps = []
    for i in range(len(eps)):
        rec = {k: recovery(k, i) for k in ("fgsm", "llcm", "worst")}
        per_eps.append({"eps": float(eps[i]), "recovery": rec,
                        "robust": {k: r[k][i] for k in ("fgsm", "llcm", "worst")},
                        "paper_attacks_hold": ok(rec["fgsm"]) and ok(rec["llcm"]), "worst_holds": ok(rec["worst"])})
    drop = b["clean"] - r["clean"]
    clean_ok = drop <= CLEAN_DROP_MAX
    finite = [(p["recovery"]["worst"], p["eps"]) for p in per_eps if not math.isnan(p["recovery"]["worst"])]
    least = min(finite) if finite else (float("nan"), float("nan"))
    holds = clean_ok and bool(finite) and all(p["worst_holds"] for p in per_eps)
    only = [p for p in per_eps if p["paper_attacks_hold"] and not p["worst_holds"]]

    def rec(v: float) -> str:
        return "undefined" if math.isnan(v) else f"{100 * v:.0f}%"

    def cell(p) -> str:
        rb, rc = p["robust"], p["recovery"]
        return (f"eps {p['eps']:g}: robust worst case {pct(rb['worst'])} vs FGSM {pct(rb['fgsm'])}, LLCM "
                f"{pct(rb['llcm'])}; recovery {rec(rc['worst'])} vs {rec(rc['fgsm'])} / {rec(rc['llcm'])}")

    on = f"on the same {n} test patches"
    if not clean_ok:
        sentence = (f"the robust model's clean accuracy {pct(r['clean'])} is more than {100 * CLEAN_DROP_MAX:g} points "
                    f"below the baseline's {pct(b['clean'])} {on}, so (c) fails before any attack")
    elif not finite:
        sentence = (f"the recovery is undefined at every eps: the worst case costs the baseline nothing (its "
                    f"worst-case accuracy equals its clean accuracy {pct(b['clean'])} {on}), so there is no gap to "
                    f"close and (c) cannot be checked against the worst case")
    elif only:
        sentence = (f"the defence holds only against the attacks the paper tried at eps "
                    f"{_eps_list(only)}: there the robust model closes >= "
                    f"{100 * RECOVERY_MIN:g}% of the baseline's gap under FGSM and LLCM but not under the worst case "
                    f"({'; '.join(cell(p) for p in only)}; {on})")
    elif holds:
        sentence = (f"the defence holds against the worst case too: least worst-case recovery "
                    f"{100 * least[0]:.0f}% (eps {least[1]:g}) >= {100 * RECOVERY_MIN:g}% {on}")
    else:
        bad = [p for p in per_eps if not p["worst_holds"]]
        sentence = (f"the worst case recovers less than {100 * RECOVERY_MIN:g}% at eps "
                    f"{_eps_list(bad)}, where FGSM or LLCM already does too "
                    f"({'; '.join(cell(p) for p in bad)}; {on})")
    if c_holds is not None and not c_holds and holds:
        sentence += "; (c) fails on the full test split's FGSM/LLCM numbers above"
    return {"holds": holds,
            "rule": f"the rule of (c) is met with the worst case (correct clean and under every attack of "
                    f"{', '.join(a.upper() for a in WORST_ATTACKS)} at that eps) in place of FGSM/LLCM: robust clean "
                    f">= baseline clean - {100 * CLEAN_DROP_MAX:g} points and, at every eps, recovery >= "
                    f"{100 * RECOVERY_MIN:g}% (undefined where the worst case costs the baseline nothing)",
            "clean_drop": drop, "least_recovery": least[0], "per_eps": per_eps,
            "only_paper_attacks": [p["eps"] for p in only], "sentence": sentence}

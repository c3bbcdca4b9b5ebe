"""Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019; Croce & Hein 2020's flags).

Every check compares accuracies of the same patches, so each comparison is paired: for two
cells A and B (attack at eps, or clean), ``n_AB`` counts the patches correct under A and wrong under
B.  A check fires when the difference is both large and unlikely to be noise:

- the accuracy difference is at least ``min_points`` percentage points of all patches, and
- the one-sided exact sign test on the discordant patches (``n_AB`` against ``n_BA``, a binomial
  with p = 1/2) gives p < ``alpha``.

The checks (each reported as flagged / passed / not run, with the cells and counts behind it):

1. ``single_step_beats_iterative``: at one eps, a single-step attack leaves fewer patches correct
   than an iterative attack on the same loss (fgsm against bim, pgd, mifgsm, apgd; llcm against illc).
2. ``accuracy_rises_with_eps``: one untargeted attack leaves more patches correct at a larger eps than
   at a smaller one (clean counts as eps 0): the eps balls are nested, so a working attack cannot do
   worse with a larger budget.  Each eps is compared with clean and with the next ``EPS_WINDOW`` larger
   eps of the run (every pair when there are at most ``EPS_WINDOW + 1``), so the cost grows linearly with
   the number of eps (10000 eps: about 9 x 10000 sign tests per attack, not 5 x 10^7).  The least-likely-class attacks (llcm, illc) are not checked: they push
   misclassified patches back to their true class, so their accuracy may rise legitimately.
3. ``black_box_beats_white_box``: at one eps, the black-box Square attack (logits only) leaves fewer
   patches correct than the strongest gradient attack; the evidence also counts the patches Square
   fools that no gradient attack fools.
4. ``zero_or_nonfinite_gradients``: the input gradient of the cross-entropy at the clean patch is
   exactly zero everywhere, or not finite, for at least one patch (AutoAttack's rule: such patches are
   invisible to every gradient attack).
5. ``worst_case_rises_with_eps``: the worst case (correct clean and under every attack) leaves more patches
   correct at the next larger eps; with nested boxes it cannot, unless the attacks fail at random.

Two more results come with the checks: ``degenerate_check`` (a model predicting one class for every
clean patch, or with a clean ROC AUC within 0.05 of 0.5, is not worth attacking) and a multiplicity note:
how many sign tests the checks ran (m), and the Bonferroni per-test threshold 0.05 / m at which a flag
would hold family-wise at 0.05.

Single-step attacks overshoot: FGSM on an undefended model often regains a point or two at a larger
eps.  ``min_points`` (default 5) keeps such small, real non-monotonicities of a one-step attack from
being reported as masking; both thresholds are recorded in the report.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SINGLE_STEP = ("fgsm", "llcm")
GRADIENT_ITERATIVE = ("bim", "illc", "pgd", "mifgsm", "apgd")
BLACK_BOX = ("square",)
# Iterative counterparts of each single-step attack (same loss, same target).
ITERATES = {"fgsm": ("bim", "pgd", "mifgsm", "apgd"), "llcm": ("illc",)}
# accuracy_rises_with_eps compares each eps with the next EPS_WINDOW larger ones (and clean): linear in the eps.
EPS_WINDOW = 8
# Least-likely-class attacks push a misclassified patch towards its true class (with two classes the
# least likely class is the true one), so their accuracy may rise with eps without any masking.
TARGETED = ("llcm", "illc")


@dataclass(frozen=True)
class MaskingThresholds:
    min_points: float = 5.0      # percentage points of all patches
    alpha: float = 0.001         # one-sided exact sign test on the discordant patches


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of ``wins`` or more successes in ``wins + losses`` fair coin flips."""
    n = wins + losses
    if n == 0:
        return 1.0
    log_half_n = -n * math.log(2.0)
    log_pmf = lambda k: math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half_n  # noqa: E731
    if wins <= n / 2:
        tail = sum(math.exp(log_pmf(k)) for k in range(0, wins))
        return max(0.0, min(1.0, 1.0 - tail))
    total, k = 0.0, wins
    while k <= n:
        term = math.exp(log_pmf(k))
        total += term
        if term < 1e-300 or (total > 0 and term < total * 1e-17):
            break
        k += 1
    return min(1.0, total)


def _cell_name(key) -> str:
    attack, eps = key
    return "clean" if attack == "clean" else f"{attack.upper()} eps={eps:g}"


class _Compare:
    def __init__(self, patches: int, accuracy: dict, discordant: dict, thresholds: MaskingThresholds):
        self.n, self.acc, self.d, self.t = patches, accuracy, discordant, thresholds
        self.comparisons = 0           # sign tests run: the multiplicity of the family of checks

    def worse(self, low, high) -> dict | None:
        """Evidence that cell ``low`` leaves significantly fewer patches correct than cell ``high``, else None."""
        wins, losses = self.d[(high, low)], self.d[(low, high)]    # correct only under high / only under low
        points = 100.0 * (self.acc[high] - self.acc[low])
        self.comparisons += 1
        p = sign_test(wins, losses)
        if points >= self.t.min_points and p < self.t.alpha:
            return {"lower": _cell_name(low), "higher": _cell_name(high), "accuracy_lower": self.acc[low],
                    "accuracy_higher": self.acc[high], "points": points, "correct_only_under_higher": wins,
                    "correct_only_under_lower": losses, "p_value": p, "patches": self.n}
        return None


def masking_checks(attacks, eps, patches: int, accuracy: dict, discordant: dict, gradients: dict | None,
                   black_box_only: dict | None = None, thresholds: MaskingThresholds | None = None,
                   worst: dict | None = None) -> dict:
    """All checks.  ``accuracy[(attack, eps)]`` (and ``("clean", 0.0)``); ``discordant[(A, B)]`` as above;
    ``gradients``: {"checked", "zero", "nonfinite"}; ``black_box_only[eps]``: patches Square fools that
    no gradient attack fools; ``worst``: {"eps": ascending eps, "accuracy": [...], "steps": [[correct only at
    the smaller eps, only at the larger], ...] for consecutive eps} of the worst case (5. below)."""
    t = thresholds or MaskingThresholds()
    cmp = _Compare(patches, accuracy, discordant, t)
    single = [a for a in attacks if a in SINGLE_STEP]
    iterative = [a for a in attacks if a in GRADIENT_ITERATIVE]
    white = [a for a in attacks if a not in BLACK_BOX and a not in TARGETED]
    checks = []

    def check(name: str, ran: bool, why_not: str, evidence: list) -> None:
        status = "not run" if not ran else ("flagged" if evidence else "passed")
        checks.append({"check": name, "status": status, "evidence": evidence, **({} if ran else {"reason": why_not})})

    pairs = [(s, it) for s in single for it in iterative if it in ITERATES[s]]
    found = [ev for e in eps for s, it in pairs if (ev := cmp.worse((s, e), (it, e))) is not None]
    check("single_step_beats_iterative", bool(pairs), "needs a single-step attack and its iterative counterpart",
          found)
    found = []
    clean = ("clean", 0.0)
    untargeted = [a for a in attacks if a not in TARGETED]
    for a in untargeted:
        chain = [clean] + [(a, e) for e in sorted(eps)]
        for i, small in enumerate(chain):
            for large in chain[i + 1:] if i == 0 else chain[i + 1:i + 1 + EPS_WINDOW]:
                if (ev := cmp.worse(small, large)) is not None:
                    found.append(ev)
    check("accuracy_rises_with_eps", bool(untargeted and eps), "needs an untargeted attack", found)
    found = []
    bb = [a for a in attacks if a in BLACK_BOX]
    for b in bb:
        for e in eps:
            strongest = min(white, key=lambda a: accuracy[(a, e)]) if white else None
            if strongest is not None and (ev := cmp.worse((b, e), (strongest, e))) is not None:
                if black_box_only is not None:
                    ev["fooled_only_by_black_box"] = int(black_box_only.get(e, 0))
                found.append(ev)
    check("black_box_beats_white_box", bool(bb and white), "needs square and a gradient attack", found)
    found = []
    if worst is not None:
        for i, (only_small, only_large) in enumerate(worst["steps"]):
            small, large = ("worst", worst["eps"][i]), ("worst", worst["eps"][i + 1])
            sub = _Compare(patches, {small: worst["accuracy"][i], large: worst["accuracy"][i + 1]},
                           {(small, large): only_small, (large, small): only_large}, t)
            if (ev := sub.worse(small, large)) is not None:
                found.append(ev)
            cmp.comparisons += sub.comparisons
    check("worst_case_rises_with_eps", worst is not None and len(worst["eps"]) > 1,
          "needs the worst case of two attacks or more at two eps or more", found)
    if gradients is not None and gradients.get("checked", 0):
        bad = gradients["zero"] + gradients["nonfinite"]
        evidence = [{"zero_gradient_patches": gradients["zero"], "nonfinite_gradient_patches": gradients["nonfinite"],
                     "patches": gradients["checked"], "share": bad / gradients["checked"]}] if bad else []
        check("zero_or_nonfinite_gradients", True, "", evidence)
    else:
        check("zero_or_nonfinite_gradients", False, "gradients were not checked", [])
    m = cmp.comparisons
    fw_threshold = FAMILY_WISE / m if m else float("nan")
    flagged_pairs = [ev for c in checks for ev in c["evidence"] if "p_value" in ev]
    multiplicity = {"comparisons": m, "alpha_per_comparison": t.alpha, "bonferroni_bound": min(1.0, m * t.alpha),
                    "family_wise_alpha": FAMILY_WISE, "family_wise_threshold": fw_threshold,
                    "flagged_comparisons": len(flagged_pairs),
                    "flagged_below_family_wise_threshold": sum(ev["p_value"] < fw_threshold for ev in flagged_pairs)}
    return {"suspected": any(c["status"] == "flagged" for c in checks), "thresholds": asdict(t), "checks": checks,
            "multiplicity": multiplicity}


FAMILY_WISE = 0.05       # the family-wise error rate the multiplicity note reports its Bonferroni threshold for


def degenerate_check(clean_confusion, auc: float | None, margin: float = 0.05) -> dict:
    """A model that says one class for every clean patch, or ranks no better than chance (clean ROC AUC within
    ``margin`` of 0.5), cannot be fooled in any meaningful way: its attack rows say nothing about robustness.
    ``clean_confusion`` [true][predicted] counts of the clean patches."""
    predicted = [sum(row[j] for row in clean_confusion) for j in range(len(clean_confusion[0]))] \
        if clean_confusion else []
    patches = sum(predicted)
    reasons = []
    if patches and sum(1 for n in predicted if n) == 1:
        reasons.append(f"it predicts class {next(j for j, n in enumerate(predicted) if n)} for all {patches} "
                       "clean patches")
    if auc is not None and auc == auc and abs(auc - 0.5) <= margin:
        reasons.append(f"its clean ROC AUC {auc:.3f} is within {margin:g} of chance (0.5)")
    return {"check": "degenerate_model", "status": "flagged" if reasons else ("passed" if patches else "not run"),
            "predicted_per_class": predicted, "clean_auc": auc, "auc_margin": margin, "reasons": reasons}


__all__ = ["MaskingThresholds", "sign_test", "masking_checks", "degenerate_check", "FAMILY_WISE", "SINGLE_STEP",
           "GRADIENT_ITERATIVE", "BLACK_BOX", "EPS_WINDOW"]

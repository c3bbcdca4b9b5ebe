"""Gradient-masking checks: the sign test against scipy, each check on constructed evidence, the paired counters
against a direct computation, and a truly gradient-masked model (a rounding front end) against its plain twin."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import recapfast as rf
from recapfast.attacks.apgd import APGDConfig
from recapfast.engine.evaluate import Evaluator
from recapfast.engine.masking import MaskingThresholds, masking_checks, sign_test
from recapfast.attacks.square import SquareConfig
from recapfast.engine.trust import TrustConfig


@pytest.mark.parametrize("wins,losses", [(0, 0), (5, 0), (0, 5), (11, 0), (30, 12), (12, 30), (76, 2), (500, 430)])
def test_sign_test_equals_scipy_binomtest(wins, losses):
    stats = pytest.importorskip("scipy.stats")
    want = 1.0 if wins + losses == 0 else stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
    assert sign_test(wins, losses) == pytest.approx(want, rel=1e-9, abs=1e-300)


def _checks(accuracy, discordant, attacks, eps, gradients=None, black_box_only=None, **thr):
    full = {}
    keys = list(accuracy)
    for a in keys:
        for b in keys:
            full[(a, b)] = discordant.get((a, b), 0)
    out = masking_checks(attacks, eps, 200, accuracy, full, gradients, black_box_only, MaskingThresholds(**thr))
    return {c["check"]: c for c in out["checks"]}, out


def test_each_check_fires_on_its_evidence_only():
    clean, f1, f2, b1, b2 = ("clean", 0.0), ("fgsm", 1.0), ("fgsm", 2.0), ("bim", 1.0), ("bim", 2.0)
    acc = {clean: 0.95, f1: 0.60, f2: 0.80, b1: 0.70, b2: 0.50}
    # fgsm eps 2 keeps 40 patches that eps 1 lost (and loses none): accuracy rises with eps
    # fgsm eps 1 fools 20 patches bim eps 1 does not: single-step beats iterative
    disc = {(f2, f1): 40, (b1, f1): 20, (clean, f1): 70, (clean, f2): 30, (clean, b1): 50, (clean, b2): 90,
            (f1, b1): 0, (f2, b2): 60, (b2, f2): 0}
    checks, out = _checks(acc, disc, ["fgsm", "bim"], [1.0, 2.0], {"checked": 200, "zero": 0, "nonfinite": 0})
    assert out["suspected"]
    rises = checks["accuracy_rises_with_eps"]
    assert rises["status"] == "flagged" and len(rises["evidence"]) == 1
    ev = rises["evidence"][0]
    assert (ev["lower"], ev["higher"], ev["correct_only_under_higher"], ev["correct_only_under_lower"]) == \
        ("FGSM eps=1", "FGSM eps=2", 40, 0) and ev["points"] == pytest.approx(20.0)
    single = checks["single_step_beats_iterative"]
    assert single["status"] == "flagged" and single["evidence"][0]["lower"] == "FGSM eps=1"
    assert checks["zero_or_nonfinite_gradients"]["status"] == "passed"
    assert checks["black_box_beats_white_box"]["status"] == "not run"
    # Below min_points, or not significant: passed.
    assert _checks(acc, disc, ["fgsm", "bim"], [1.0, 2.0], min_points=25)[0]["accuracy_rises_with_eps"]["status"] == \
        "passed"
    weak = {**disc, (f1, f2): 30}          # 40 against 30: not significant
    assert _checks(acc, weak, ["fgsm"], [1.0, 2.0])[0]["accuracy_rises_with_eps"]["status"] == "passed"


def test_targeted_attacks_may_rise_and_gradients_flag_any():
    clean, l1, l2 = ("clean", 0.0), ("llcm", 1.0), ("llcm", 2.0)
    acc = {clean: 0.9, l1: 0.5, l2: 0.8}
    checks, _ = _checks(acc, {(l2, l1): 60}, ["llcm"], [1.0, 2.0], {"checked": 200, "zero": 1, "nonfinite": 2})
    assert checks["accuracy_rises_with_eps"]["status"] == "not run"
    grads = checks["zero_or_nonfinite_gradients"]
    assert grads["status"] == "flagged" and grads["evidence"][0]["share"] == pytest.approx(3 / 200)


def test_paired_counters_equal_a_direct_computation(small_model):
    g = torch.Generator().manual_seed(2)
    xs = torch.randint(0, 256, (2, 9, 3, 32, 32), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 2, (2, 9), generator=g)
    ev = Evaluator(small_model, [1, 4], ("fgsm", "bim"), trust=TrustConfig(detection=False))
    for x, y in zip(xs, ys):
        ev.update(x, y)
    ev.result()
    y = ys.reshape(-1)
    with torch.no_grad():
        ok = [small_model(xs.reshape(-1, 3, 32, 32).float()).argmax(1) == y]
        for fn in (rf.fgsm, rf.bim):
            for e in (1, 4):
                adv = torch.cat([fn(small_model, xb, yb, e) for xb, yb in zip(xs, ys)])
                ok.append(small_model(adv).argmax(1) == y)
    want = [[int((a & ~b).sum()) for b in ok] for a in ok]
    cells = [("clean", 0.0)] + [(a, e) for a in ("fgsm", "bim") for e in (1.0, 4.0)]
    counted = ev.trust.discordant()          # every pair the checks compare; with two eps, every pair
    assert counted == {(a, b): want[i][j] for i, a in enumerate(cells) for j, b in enumerate(cells)
                       if a[0] == "clean" or b[0] == "clean" or a[0] == b[0] or a[1] == b[1]}


class RoundedInput(nn.Module):
    """Gradient masking by construction: round() in front of the detector has a zero gradient everywhere."""

    def __init__(self, model, step: float):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, x):
        return self.model(torch.round(x / self.step) * self.step)


def test_masked_model_is_flagged_and_its_plain_twin_is_not(synth_dir):
    from recapfast.attacks.universal import load_patches

    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)
    config = TrustConfig(apgd=APGDConfig(steps=5), square=SquareConfig(queries=60), detection=False,
                         thresholds=MaskingThresholds(alpha=0.01))     # 48 patches: a looser test level
    status = {}
    for name, model in (("masked", RoundedInput(rf.load_model("baseline"), 8).eval()),
                        ("plain", rf.load_model("baseline"))):
        ev = Evaluator(model, [4], ("fgsm", "apgd", "square"), trust=config)
        ev.update(x, y)
        res = ev.result(name)
        status[name] = {c["check"]: c for c in res.masking["checks"]}
        md = res.to_markdown()
        assert ("Gradient masking suspected" in md) == res.masking["suspected"]
    masked, plain = status["masked"], status["plain"]
    assert masked["zero_or_nonfinite_gradients"]["evidence"][0]["zero_gradient_patches"] == 48
    bb = masked["black_box_beats_white_box"]
    assert bb["status"] == "flagged" and bb["evidence"][0]["fooled_only_by_black_box"] > 0
    assert all(c["status"] == "passed" for name, c in plain.items() if name != "worst_case_rises_with_eps")
    assert plain["worst_case_rises_with_eps"]["status"] == "not run"          # one eps: nothing to compare


def test_worst_case_rising_with_eps_is_flagged_and_counted():
    """The worst case at eps 2 right on 40 patches more than at eps 1 (and on none fewer): flagged, and the
    multiplicity note counts that sign test."""
    from recapfast.engine.masking import masking_checks

    acc = {("clean", 0.0): 0.9}
    worst = {"eps": [1.0, 2.0], "accuracy": [0.2, 0.6], "steps": [[0, 40]]}
    out = masking_checks([], [1.0, 2.0], 100, acc, {}, None, None, None, worst)
    check = next(c for c in out["checks"] if c["check"] == "worst_case_rises_with_eps")
    assert check["status"] == "flagged" and check["evidence"][0]["correct_only_under_higher"] == 40
    assert out["multiplicity"]["comparisons"] == 1 and out["multiplicity"]["flagged_comparisons"] == 1
    worst["steps"] = [[20, 20]]
    out = masking_checks([], [1.0, 2.0], 100, acc, {}, None, None, None, dict(worst, accuracy=[0.4, 0.4]))
    assert next(c for c in out["checks"] if c["check"] == "worst_case_rises_with_eps")["status"] == "passed"

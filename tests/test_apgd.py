"""APGD-CE: torchattacks' APGD as the float-mode oracle, and the uint8-grid contract."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import recapfast as rf
from recapfast.attacks.apgd import APGDConfig, apgd, apgd_attack, checkpoint_windows

torchattacks = pytest.importorskip("torchattacks")


SCALE = 256.0     # a power of two: [0, 1/256 * 255] <-> pixel units is exact in float32


class Unit01(nn.Module):
    """The pixel-unit model as a [0, 1] attack library sees it: input x / 256 (exact scaling)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x * SCALE)


@pytest.fixture(scope="module")
def robust_batch(synth_dir):
    """Bundled robust model on 32x32 crops kept inside [8, 247] (so neither library's [0, 1] / [0, 255] clip binds);
    labels = its own clean decisions, so every patch is attacked (torchattacks draws the random start only for
    the correctly classified patches)."""
    from recapfast.attacks.universal import load_patches

    model = rf.load_model("robust")
    x = load_patches(synth_dir, 32)[::2].clamp(8, 247)
    with torch.no_grad():
        y = model(x.float()).argmax(1)
    return model, x, y


def test_checkpoint_schedule_is_croce_and_heins():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): 22, 41, 57, 70, 80, 87, 93, 99 of 100
    w = checkpoint_windows(100)
    assert w == [22, 19, 16, 13, 10, 7, 6, 6]
    assert [sum(w[:i + 1]) for i in range(len(w))] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoint_windows(10) == [2, 1, 1, 1, 1, 1, 1, 1, 1] and checkpoint_windows(1) == [1]


# (2, 20, 1), not (3, 20, 1): main's robust model (retrained on generator v3 data) is fooled on every patch at eps 3
@pytest.mark.parametrize("eps,steps,restarts", [(1, 10, 1), (2, 12, 2), (2, 20, 1)])
def test_float_mode_equals_torchattacks_apgd(robust_batch, eps, steps, restarts):
    from recapfast.attacks.apgd import _single_run, _start
    from recapfast.attacks.iterative import _box

    model, x, y = robust_batch
    oracle = torchattacks.APGD(Unit01(model).eval(), norm="Linf", eps=eps / SCALE, steps=steps, n_restarts=restarts,
                               seed=3, loss="ce")
    theirs = (oracle(x.float() / SCALE, y) * SCALE).detach()
    ours = apgd(model, x, y, eps, steps=steps, restarts=restarts, seed=3, quantize=False)
    with torch.no_grad():
        fooled = model(ours).argmax(1) != y
    # Pixel for pixel: the successful images (torchattacks returns the clean patch for the others) ...
    assert torch.equal(ours[fooled], theirs[fooled]) and torch.equal(theirs[~fooled], x[~fooled].float())
    # ... and, against torchattacks' best-loss mode, the highest-loss iterate of every patch (first restart).
    one = torchattacks.APGD(Unit01(model).eval(), norm="Linf", eps=eps / SCALE, steps=steps, n_restarts=1, seed=3,
                            loss="ce")
    torch.manual_seed(3)
    _, best = one.perturb(x.float() / SCALE, y, best_loss=True)
    x0 = x.float()
    lo, hi = _box(x0, eps, False)
    start = _start(x0, eps, lo, hi, False, torch.Generator().manual_seed(3))
    ours_best = _single_run(model, x0, y, lo, hi, float(eps), APGDConfig(steps=steps), False, start)[0]
    assert torch.equal(ours_best, best.detach() * SCALE)


def test_uint8_grid_box_and_unchanged_misclassified(small_model, batch):
    x, y = batch
    x = x.clone()
    x[:, :, :3] = 0
    x[:, :, -3:] = 255
    for eps in (1, 2.5, 4):
        adv = apgd(small_model, x, y, eps, steps=8, restarts=2)
        delta = adv - x.float()
        assert torch.equal(adv, adv.round()) and adv.min() >= 0 and adv.max() <= 255
        assert delta.abs().max() <= int(eps)        # integer box: a fractional eps acts as its floor
    with torch.no_grad():
        wrong = small_model(x.float()).argmax(1) != y
    assert wrong.any()
    assert torch.equal(adv[wrong], x[wrong].float())


def test_seeded_restarts_only_add_successes(robust_batch):
    model, x, y = robust_batch
    one = apgd(model, x, y, 1, steps=6, restarts=1, seed=5)
    assert torch.equal(one, apgd(model, x, y, 1, steps=6, restarts=1, seed=5))
    assert not torch.equal(one, apgd(model, x, y, 1, steps=6, restarts=1, seed=6))
    three = apgd(model, x, y, 1, steps=6, restarts=3, seed=5)
    with torch.no_grad():
        f1, f3 = model(one).argmax(1) != y, model(three).argmax(1) != y
    assert bool((f3 | ~f1).all())                   # the first restart is the same run: its successes stay
    assert torch.equal(three[f1], one[f1])


def test_params_batchnorm_untouched_and_errors(small_model, batch):
    x, y = batch
    small_model.train()
    state = {k: v.clone() for k, v in small_model.state_dict().items()}
    apgd(small_model, x, y, 2, steps=3)
    assert small_model.training and all(p.grad is None for p in small_model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in small_model.state_dict().items())
    with pytest.raises(ValueError, match="labels"):
        apgd(small_model, x, None, 2)
    with pytest.raises(ValueError, match="steps"):
        apgd_attack(small_model, x, y, 2, APGDConfig(steps=0))
    assert apgd(small_model, x[:0], y[:0], 2).shape == (0, 3, 32, 32)

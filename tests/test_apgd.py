"""APGD-CE: torchattacks' APGD as the float-mode oracle, and the uint8-grid contract."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import recapfast as rf
from recapfast.attacks.apgd import APGDConfig, apgd, apgd_attack, apgd_rows, checkpoint_windows

from conftest import Autograd

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
    """The README's equality claim, exactly as stated: a model computed through autograd (``Autograd``: not the
    folded fast path, whose float rounding differs), quantize=False, early_stop=False, x / 256 scaling, patches
    inside [8, 247] -> the same images as torchattacks pixel for pixel; with early stopping the same predictions."""
    folded, x, y = robust_batch
    model = Autograd(folded)
    oracle = torchattacks.APGD(Unit01(model).eval(), norm="Linf", eps=eps / SCALE, steps=steps, n_restarts=restarts,
                               seed=3, loss="ce")
    theirs = (oracle(x.float() / SCALE, y) * SCALE).detach()
    config = APGDConfig(steps, restarts, 0.75, 3, early_stop=False)
    ours = apgd_attack(model, x, y, eps, config, quantize=False)
    with torch.no_grad():
        fooled = model(ours).argmax(1) != y
        assert torch.equal(fooled, model(theirs).argmax(1) != y)
    # Pixel for pixel: the successful images (torchattacks returns the clean patch for the others) ...
    assert torch.equal(ours[fooled], theirs[fooled]) and torch.equal(theirs[~fooled], x[~fooled].float())
    # ... and, against torchattacks' best-loss mode, the highest-loss iterate of every patch (first restart).
    one = torchattacks.APGD(Unit01(model).eval(), norm="Linf", eps=eps / SCALE, steps=steps, n_restarts=1, seed=3,
                            loss="ce")
    torch.manual_seed(3)
    _, best = one.perturb(x.float() / SCALE, y, best_loss=True)
    board = apgd_rows(model, x, y, [eps], APGDConfig(steps, 1, 0.75, 3, early_stop=False), quantize=False,
                      clean_logits=torch.zeros(len(y), 2).scatter_(1, y.view(-1, 1), 1.0))
    unfooled = ~board.fooled
    assert torch.equal(board.out[unfooled], best.detach()[unfooled] * SCALE)
    # The default (early stop): same predictions, every image in the box.
    early = apgd(model, x, y, eps, steps=steps, restarts=restarts, seed=3, quantize=False)
    with torch.no_grad():
        assert torch.equal(model(early).argmax(1) != y, fooled)
    assert (early - x.float()).abs().max() <= eps
    # The folded fast path (a plain LaplacianCNN) differs by float rounding only: robust accuracy within a patch.
    fast = apgd(folded, x, y, eps, steps=steps, restarts=restarts, seed=3, quantize=False)
    with torch.no_grad():
        assert abs(int((folded(fast).argmax(1) == y).sum()) - int((~fooled).sum())) <= 1


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


@pytest.mark.parametrize("eps", [1, 2])
def test_grid_apgd_is_at_least_as_strong_as_float_apgd_rounded_at_the_end(synth_dir, eps):
    """Issue 23: on the bundled robust model, in the default mode (early stop, 100 steps), the uint8-grid attack
    leaves no patch stronger-defended than float APGD whose result is rounded afterwards: per patch it fools the
    model or ends with a cross-entropy >= the rounded float image's, on >= 99% of patches (the old grid attack,
    which rounded its iterate and stalled, failed this at eps 1), and its robust accuracy is never higher."""
    import torch.nn.functional as F
    from recapfast.attacks.universal import load_patches

    model = rf.load_model("robust")
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)
    grid = apgd(model, x, y, eps)
    rounded = apgd(model, x, y, eps, quantize=False).round()
    assert torch.equal(grid, grid.round()) and (grid - x.float()).abs().max() <= eps
    with torch.no_grad():
        lg, lf = model(grid), model(rounded)
    ce_grid, ce_float = F.cross_entropy(lg, y, reduction="none"), F.cross_entropy(lf, y, reduction="none")
    fooled_grid, fooled_float = lg.argmax(1) != y, lf.argmax(1) != y
    at_least_as_strong = fooled_grid | (ce_grid >= ce_float - 1e-5)
    assert at_least_as_strong.float().mean() >= 0.99, (ce_grid - ce_float)[~at_least_as_strong]
    assert int((~fooled_grid).sum()) <= int((~fooled_float).sum())

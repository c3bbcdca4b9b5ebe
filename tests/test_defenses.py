"""fast-at and TRADES against hand-written references on a tiny model; their draws are per step and per rank."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from recapfast.models import fastpath
from recapfast.training.defenses import (adversarial_eps, defense_loss, fast_at_batch,
                                         image_noise, kl_input_gradient, trades_adversarial, trades_loss)
from recapfast.training.train import TrainConfig, resume_path, train

from conftest import Autograd, make_model

TINY = (4, 4, 8, 8, 8)


def _batch(n=6, size=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g).float()
    x[0, :, :4] = 0.0                   # saturated pixels: the box is clipped to [0, 255]
    x[1, :, :4] = 255.0
    return x, torch.tensor([0, 1] * (n // 2))


def _box(x, e):
    """[ceil(x - eps), floor(x + eps)] within [0, 255], per image eps e [B]."""
    e = e.view(-1, 1, 1, 1)
    return torch.ceil((x - e).clamp(min=0)), torch.floor((x + e).clamp(max=255))


def _ce_grad(model, x, y):
    model.eval()
    xs = x.clone().requires_grad_(True)
    F.cross_entropy(model(xs), y, reduction="sum").backward()
    model.train()
    return xs.grad


def test_draws_are_per_step_and_sliced_by_rank():
    cfg = TrainConfig(defense="trades", seed=4)
    full_eps = adversarial_eps(cfg, 9, 6, count=6)
    assert full_eps.shape == (6,) and ((full_eps >= 1) & (full_eps <= 5)).all()
    assert torch.equal(adversarial_eps(cfg, 9, 6, count=6), full_eps)              # resumable: (seed, step) only
    assert not torch.equal(adversarial_eps(cfg, 10, 6, count=6), full_eps)
    assert adversarial_eps(TrainConfig(robust=True, adv_count=4, seed=4), 9, 6).shape == (4,)   # eq. 7's k
    for normal in (False, True):
        full = image_noise(cfg, 9, (3, 8, 8), 6, normal=normal)
        parts = [image_noise(cfg, 9, (3, 8, 8), 3, rank=r, world=2, normal=normal) for r in range(2)]
        assert torch.equal(full[0::2], parts[0]) and torch.equal(full[1::2], parts[1])
        assert not torch.equal(image_noise(cfg, 10, (3, 8, 8), 6, normal=normal), full)
    for r in range(2):
        assert torch.equal(adversarial_eps(cfg, 9, 6, r, 2, count=6), full_eps[r::2])
    u = image_noise(cfg, 1, (3, 32, 32), 4)
    assert u.min() >= -1 and u.max() < 1 and abs(float(u.mean())) < 0.02


@pytest.mark.parametrize("wrap", [True, False])
def test_fast_at_batch_is_random_start_fgsm(wrap, op_backend):
    """The hand reference: start = P(round(x + eps u)), then P(round(start + 1.25 eps sign(grad CE(f(start))))), eval
    mode, P the integer box.  Through autograd (``Autograd``) equal to the pixel; through the fast path (float rounding
    of the gradient) on >= 99.9% of pixels."""
    plain = make_model(seed=1, widths=TINY).train()
    model = Autograd(plain) if wrap else plain
    before = copy.deepcopy(plain.state_dict())
    x, y = _batch()
    cfg = TrainConfig(defense="fast-at", seed=2)
    eps = adversarial_eps(cfg, 5, 6, count=6)
    u = image_noise(cfg, 5, (3, 16, 16), 6)
    out = fast_at_batch(model, x, y, eps, u, 1.25)

    lo, hi = _box(x, eps)
    e = eps.view(-1, 1, 1, 1)
    start = torch.round(x + e * u).clamp(min=lo, max=hi)
    ref = torch.round(start + 1.25 * e * torch.sign(_ce_grad(plain, start, y))).clamp(min=lo, max=hi)
    if wrap:
        assert torch.equal(out, ref)
    else:
        assert (out == ref).float().mean() >= 0.999
    assert plain.training and all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    assert torch.equal(out, out.round()) and ((out - x).abs().flatten(1).amax(1) <= eps.floor()).all()
    assert (out >= 0).all() and (out <= 255).all()
    # the random start matters: plain FGSM from x would put every moved pixel on the box's corner
    fgsm = torch.round(x + e.floor() * torch.sign(_ce_grad(plain, x, y))).clamp(0, 255)
    assert (out != fgsm).float().mean() > 0.2


def test_each_rank_attacks_exactly_its_share_of_the_global_batch():
    """Under torchrun rank r holds images r, r + world, ...: its eps, noise and adversarial images are those of the
    single-process run's same images (the attacks are per image, in eval mode)."""
    model = make_model(seed=2, widths=TINY).train()
    x, y = _batch(n=8)
    for defense in ("fast-at", "trades"):
        cfg = TrainConfig(defense=defense, seed=5, trades_steps=2)
        normal = defense == "trades"

        def images(xs, ys, rank, world):
            eps = adversarial_eps(cfg, 3, 8, rank, world, count=8)
            noise = image_noise(cfg, 3, (3, 16, 16), xs.shape[0], rank, world, normal=normal)
            if defense == "fast-at":
                return fast_at_batch(model, xs, ys, eps, noise)
            return trades_adversarial(model, xs, eps, noise, 2, 0.5)

        full = images(x, y, 0, 1)
        for r in range(2):
            assert torch.equal(images(x[r::2], y[r::2], r, 2), full[r::2]), (defense, r)


def test_fast_at_loss_is_ce_on_those_images():
    plain = make_model(seed=1, widths=TINY).train()
    x, y = _batch()
    cfg = TrainConfig(defense="fast-at", seed=2)
    a, b = copy.deepcopy(plain), copy.deepcopy(plain)
    loss, _ = defense_loss(Autograd(a), x, y, cfg, step=5)
    eps = adversarial_eps(cfg, 5, 6, count=6)
    xb = fast_at_batch(Autograd(b), x, y, eps, image_noise(cfg, 5, (3, 16, 16), 6), 1.25)
    torch.testing.assert_close(loss, F.cross_entropy(b(xb), y), rtol=0, atol=0)


def _hand_trades(model, x, y, eps, n, steps, fraction, beta):
    """TRADES as its reference code writes it (nn.KLDivLoss(size_average=False)), in pixel units on the integer box."""
    kl_sum = torch.nn.KLDivLoss(reduction="sum")
    lo, hi = _box(x, eps)
    model.eval()
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = torch.max(torch.min(x + 0.001 * 255 * n, hi), lo)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_kl = kl_sum(F.log_softmax(model(x_adv), dim=1), p_nat)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + fraction * eps.view(-1, 1, 1, 1) * torch.sign(grad.detach())
        x_adv = torch.max(torch.min(x_adv, hi), lo)
    x_adv = torch.round(x_adv)
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, y) + beta * (1.0 / x.shape[0]) * kl_sum(F.log_softmax(model(x_adv), dim=1),
                                                                         F.softmax(logits, dim=1))
    return x_adv, loss


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_trades_loss_is_kl_and_pgd(activation):
    torch.manual_seed(0)
    plain = make_model(seed=3, widths=TINY)
    if activation != "relu":
        smooth = type(plain)(TINY, activation=activation)
        smooth.load_state_dict(plain.state_dict())
        plain = smooth
    plain.train()
    x, y = _batch()
    cfg = TrainConfig(defense="trades", seed=1, trades_steps=4, trades_beta=3.0)
    a, b = copy.deepcopy(plain), copy.deepcopy(plain)
    loss, stats = defense_loss(Autograd(a), x, y, cfg, step=2)
    eps = adversarial_eps(cfg, 2, 6, count=6)
    n = image_noise(cfg, 2, (3, 16, 16), 6, normal=True)
    x_ref, loss_ref = _hand_trades(b, x, y, eps, n, 4, 2.5 / 4, 3.0)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    assert float(stats["kl"]) > 0
    ga = torch.autograd.grad(loss, list(a.parameters()))
    gb = torch.autograd.grad(loss_ref, list(b.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)
    for k, v in a.state_dict().items():                      # same BatchNorm updates (both train-mode forwards)
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    # The inner maximization itself (through autograd) is the hand loop's
    assert torch.equal(trades_adversarial(Autograd(copy.deepcopy(plain)), x, eps, n, 4, 2.5 / 4), x_ref)
    assert ((x_ref - x).abs().flatten(1).amax(1) <= eps.floor()).all() and not torch.equal(x_ref, x)
    # beta weighs the KL term: beta 0 is plain cross-entropy
    loss0, _ = trades_loss(copy.deepcopy(plain), x, y, x_ref, 0.0)
    torch.testing.assert_close(loss0, F.cross_entropy(copy.deepcopy(plain)(x), y))


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_trades_attack_through_the_fast_path(activation, synth_dir):
    """The folded fast path's TRADES images equal the autograd path's (on a trained model: on an untrained tiny one
    the KL's gradient near x, softmax(z') - p ~ 1e-7, is float rounding, and its sign anything)."""
    import recapfast as rf
    from recapfast.attacks.universal import load_patches

    base = rf.load_model("baseline")
    model = rf.LaplacianCNN(base.widths, activation=activation)
    model.load_state_dict(base.state_dict())
    model.eval()
    x = load_patches(synth_dir, 32)[:12].float()
    cfg = TrainConfig(defense="trades", seed=1)
    eps, n = adversarial_eps(cfg, 2, 12, count=12), image_noise(cfg, 2, (3, 32, 32), 12, normal=True)
    assert fastpath.supports(model)
    slow = trades_adversarial(Autograd(model), x, eps, n, 4, 2.5 / 4)
    fast = trades_adversarial(model, x, eps, n, 4, 2.5 / 4)
    assert (fast == slow).float().mean() >= 0.999 and not torch.equal(fast, x)


def test_kl_gradient_fast_path_equals_autograd():
    for activation in ("relu", "gelu"):
        plain = make_model(seed=5, widths=TINY)
        model = type(plain)(TINY, activation=activation)
        model.load_state_dict(plain.state_dict())
        model.eval()
        x, _ = _batch(seed=8)
        p = torch.softmax(torch.randn(6, 2, generator=torch.Generator().manual_seed(1)), 1)
        fast = kl_input_gradient(model, x, p, fastpath.FoldedLaplacianCNN(model))
        slow = kl_input_gradient(model, x, p)
        assert float((fast - slow).abs().max() / slow.abs().max()) < 1e-4, activation


@pytest.mark.parametrize("defense", ["fast-at", "trades"])
def test_defenses_train_and_resume_exactly(defense, synth_dir, tmp_path):
    base = dict(batch_size=8, lr=1e-3, val_every=2, seed=3, widths=TINY, defense=defense, trades_steps=2,
                val_attack_steps=2)
    train(synth_dir, tmp_path / "a.safetensors", TrainConfig(iters=4, **base), log=lambda m: None)
    train(synth_dir, tmp_path / "b.safetensors", TrainConfig(iters=2, **base), log=lambda m: None)
    train(synth_dir, tmp_path / "b.safetensors", TrainConfig(iters=4, **base), resume=True, log=lambda m: None)
    a = torch.load(resume_path(tmp_path / "a.safetensors"), weights_only=True)
    b = torch.load(resume_path(tmp_path / "b.safetensors"), weights_only=True)
    assert a["step"] == b["step"] == 4 and a["config"]["defense"] == defense
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

"""Training: the robust objective's gradient, a loss that goes down, resumable runs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from recapfast.data.folder import DataError, PatchDataset, discover, make_loader
from recapfast.models.laplacian import LaplacianCNN
from recapfast.training.train import (StepBatches, TrainConfig, adversarial_eps, fgsm_mixed_batch, resume_path,
                             robust_loss, train)

from conftest import make_model

TINY = (4, 4, 8, 8, 8)


def test_gradient_norm_penalty_gradient_matches_finite_differences(op_backend):
    model = make_model(seed=2, widths=TINY).double().train()
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64) * 255).round()
    y = torch.tensor([0, 1, 1, 0])
    weights = torch.tensor([0.2, 0.2, 1.0, 1.0], dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}

    def loss_of(name):
        def f(w):
            p = dict(params, **{name: w})
            net = lambda inp: functional_call(model, (p, buffers), (inp,))  # noqa: E731
            return robust_loss(net, x, y, weights, penalty=0.5)[0]
        return f

    for name in ("units.0.conv.weight", "units.3.bn.weight", "fc.bias"):
        w = params[name].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(loss_of(name), (w,), eps=1e-6, atol=1e-6, rtol=1e-4)
    # the penalty really contributes to the weight gradient (double backprop, not detached)
    w = params["units.0.conv.weight"].clone().requires_grad_(True)
    (with_penalty,) = torch.autograd.grad(loss_of("units.0.conv.weight")(w), w)
    net = lambda inp: functional_call(model, (dict(params, **{"units.0.conv.weight": w}), buffers), (inp,))  # noqa
    (without,) = torch.autograd.grad(robust_loss(net, x, y, weights, penalty=0.0)[0], w)
    assert not torch.allclose(with_penalty, without)


def test_robust_loss_is_eq_5_to_7(op_backend):
    model = make_model(seed=5, widths=TINY).train()
    x = torch.randint(0, 256, (6, 3, 16, 16)).float()
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    weights = torch.tensor([0.2, 0.2, 1, 1, 1, 1.0])
    loss, stats = robust_loss(model, x, y, weights, penalty=2.0)
    xr = x.clone().requires_grad_(True)
    ce = F.cross_entropy(model(xr), y, reduction="none")
    (gx,) = torch.autograd.grad(ce.sum(), xr)
    expected = (weights * (ce + 2.0 * gx.flatten(1).norm(dim=1))).sum() / 6
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)


def test_fgsm_mixed_batch_uses_eval_mode_and_per_image_eps():
    model = make_model(seed=6, widths=TINY).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (8, 3, 16, 16)).float()
    y = torch.randint(0, 2, (8,))
    eps = adversarial_eps(TrainConfig(robust=True, adv_count=4, seed=1), step=0, global_batch=8)
    assert eps.shape == (4,) and ((eps >= 1) & (eps <= 5)).all()
    out = fgsm_mixed_batch(model, x, y, eps)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(out[4:], x[4:])
    step = (out[:4] - x[:4]).abs().flatten(1).amax(1)
    assert torch.equal(out, out.round()) and (step >= 1).all() and (step <= 5).all()
    assert len(set(step.tolist())) > 1, "eps is drawn per image"


def test_step_batches_are_deterministic_and_resumable():
    full = list(StepBatches(10, 4, seed=1, start=0, stop=7))
    tail = list(StepBatches(10, 4, seed=1, start=3, stop=7))
    assert full[3:] == tail and all(len(b) == 4 for b in full)
    assert sorted(full[0] + full[1]) == sorted(set(full[0] + full[1]))  # no repeats within an epoch


def _dataset_loss(model, root):
    loader = make_loader(PatchDataset(discover(root), 64), 64)
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in loader:
            total += float(F.cross_entropy(model(b.x.float()), b.y, reduction="sum"))
            n += b.x.shape[0]
    return total / n


def test_short_training_lowers_the_loss(synth_dir, tmp_path):
    from recapfast import load_model

    cfg = TrainConfig(iters=30, batch_size=16, lr=3e-3, val_every=10, seed=0, widths=TINY)
    res = train(synth_dir, tmp_path / "m.safetensors", cfg, log=lambda m: None)
    torch.manual_seed(0)
    initial = LaplacianCNN(TINY)
    initial.load_state_dict(torch.load(resume_path(tmp_path / "m.safetensors"), weights_only=True)["model"])
    assert res.iterations == 30 and len(res.history) == 3
    torch.manual_seed(0)
    untrained = LaplacianCNN(TINY)
    assert _dataset_loss(initial, synth_dir) < _dataset_loss(untrained, synth_dir)
    assert _dataset_loss(load_model(tmp_path / "m.safetensors"), synth_dir) < _dataset_loss(untrained, synth_dir)


def test_resume_continues_exactly(synth_dir, tmp_path, op_backend):
    base = dict(batch_size=8, lr=1e-3, val_every=5, seed=3, widths=TINY, robust=True, penalty=0.1, adv_count=4)
    train(synth_dir, tmp_path / "a.safetensors", TrainConfig(iters=10, **base), log=lambda m: None)
    train(synth_dir, tmp_path / "b.safetensors", TrainConfig(iters=5, **base), log=lambda m: None)
    train(synth_dir, tmp_path / "b.safetensors", TrainConfig(iters=10, **base), resume=True, log=lambda m: None)
    a = torch.load(resume_path(tmp_path / "a.safetensors"), weights_only=True)
    b = torch.load(resume_path(tmp_path / "b.safetensors"), weights_only=True)
    assert a["step"] == b["step"] == 10
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    with pytest.raises(DataError, match="other settings"):
        train(synth_dir, tmp_path / "b.safetensors", TrainConfig(iters=12, **dict(base, lr=0.5)), resume=True,
              log=lambda m: None)
    with pytest.raises(DataError, match="exists already"):
        train(synth_dir, tmp_path / "b.safetensors", TrainConfig(iters=12, **base), log=lambda m: None)


def test_ranks_share_the_global_batch_eps():
    cfg = TrainConfig(robust=True, adv_count=5, seed=2)
    full = adversarial_eps(cfg, step=7, global_batch=8)
    parts = [adversarial_eps(cfg, step=7, global_batch=8, rank=r, world=2) for r in range(2)]
    assert torch.equal(full[0::2], parts[0]) and torch.equal(full[1::2], parts[1])
    assert parts[0].numel() == 3 and parts[1].numel() == 2  # global images 0,2,4 and 1,3


def test_init_starts_from_a_checkpoints_weights(synth_dir, tmp_path):
    from recapfast import load_model

    cfg = TrainConfig(iters=10, batch_size=8, lr=3e-3, val_every=5, seed=0, widths=TINY)
    train(synth_dir, tmp_path / "a.safetensors", cfg, log=lambda m: None)
    start = TrainConfig(iters=0, batch_size=8, val_every=5, seed=1, widths=TINY, robust=True, adv_count=4,
                        init=str(tmp_path / "a.safetensors"))
    train(synth_dir, tmp_path / "b.safetensors", start, log=lambda m: None)
    a, b = load_model(tmp_path / "a.safetensors").state_dict(), load_model(tmp_path / "b.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = train(synth_dir, tmp_path / "c.safetensors", TrainConfig(**{**start.__dict__, "init": None}),
                  log=lambda m: None)
    c = load_model(fresh.checkpoint).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(DataError, match="widths"):
        train(synth_dir, tmp_path / "d.safetensors", TrainConfig(**{**start.__dict__, "widths": (4, 4, 4, 4, 4)}),
              log=lambda m: None)


def test_resume_of_a_state_from_before_defense_and_activation(synth_dir, tmp_path):
    """A resume state saved before --defense/--activation existed: robust means eq. 5-7 selected by FGSM, ReLU."""
    base = dict(batch_size=8, lr=1e-3, val_every=2, seed=3, widths=TINY, robust=True, penalty=0.1, adv_count=4,
                val_attack="fgsm")
    out = tmp_path / "old.safetensors"
    train(synth_dir, out, TrainConfig(iters=2, **base), log=lambda m: None)
    state = torch.load(resume_path(out), weights_only=True)
    for key in ("defense", "activation", "val_attack", "val_attack_steps", "fast_at_step", "trades_beta",
                "trades_steps", "trades_step"):
        del state["config"][key]
    torch.save(state, resume_path(out))
    with pytest.raises(DataError, match="val_attack"):          # it was selected by FGSM: say so, do not mix rules
        train(synth_dir, out, TrainConfig(iters=4, **dict(base, val_attack="apgd")), resume=True, log=lambda m: None)
    res = train(synth_dir, out, TrainConfig(iters=4, **base), resume=True, log=lambda m: None)
    assert res.iterations == 4

"""FGSM / LLCM / sweep against plain references written here, and against torchattacks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import recapfast as rf
from recapfast.attacks.single_step import least_likely_class

from conftest import make_model


def reference_attack(model, x, target, eps, direction, quantize=True):
    """Paper eq. 2/4 written out plainly: one gradient of CE(f(x), target), a signed step, clip; on the grid the
    step goes to the corner of the integer box [ceil(x - eps), floor(x + eps)] (x rounded where the gradient is 0)."""
    model.eval()
    xf = x.to(torch.float32).clone().requires_grad_(True)
    loss = F.cross_entropy(model(xf), target, reduction="sum")
    (g,) = torch.autograd.grad(loss, xf)
    x0, d = xf.detach(), direction * torch.sign(g)
    if not quantize:
        return torch.clamp(x0 + torch.tensor(float(eps)) * d, 0, 255)
    hi, lo = torch.floor(torch.clamp(x0 + eps, max=255)), torch.ceil(torch.clamp(x0 - eps, min=0))
    return torch.where(d > 0, hi, torch.where(d < 0, lo, torch.round(x0)))


@pytest.mark.parametrize("eps", [1, 2, 5, 0.5, 2.5])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, "fractional"])
def test_fgsm_equals_reference(small_model, batch, eps, dtype):
    x, y = batch
    x = x.to(torch.float32) + 0.375 if dtype == "fractional" else x.to(dtype)  # float x between grey levels too
    expected = reference_attack(small_model, x, y, eps, +1)
    got = rf.fgsm(small_model, x, y, eps)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize("eps", [1, 3, 1.5])
def test_llcm_equals_reference(small_model, batch, eps):
    x, y = batch
    with torch.no_grad():
        target = small_model(x.float()).argmin(1)
    expected = reference_attack(small_model, x, target, eps, -1)
    assert torch.equal(rf.llcm(small_model, x, y, eps), expected)


def test_unquantized_output_is_the_raw_clip(small_model, batch):
    x, y = batch
    got = rf.fgsm(small_model, x, y, 0.5, quantize=False)
    assert torch.equal(got, reference_attack(small_model, x, y, 0.5, +1, quantize=False))
    frac = got - got.floor()
    assert (frac == 0.5).any(), "eps 0.5 on integer pixels must leave half-grey values when not quantized"


def test_quantized_output_is_on_the_uint8_grid(small_model, batch):
    x, y = batch
    for eps in (0.5, 1.5, 2.5, 4):
        out = rf.fgsm(small_model, x, y, eps)
        assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
        assert (out - x.float()).abs().max() <= eps
    # round half to even: 10 + 0.5 -> 10, 11 + 0.5 -> 12
    x0 = torch.full((1, 3, 16, 16), 10, dtype=torch.uint8)
    x0[..., 8:, :] = 11
    up = torch.ones(1, 3, 16, 16)
    out = rf.ops.perturb(x0, up, [0.5], [1.0], True)[0]
    assert out[..., :8, :].unique().tolist() == [10] and out[..., 8:, :].unique().tolist() == [12]


def test_clipping_at_the_range_ends(small_model):
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    x[1] = 255
    y = torch.tensor([0, 1])
    out = rf.fgsm(small_model, x, y, 5)
    assert out.min() >= 0 and out.max() <= 255
    assert set(out[0].unique().tolist()) <= {0.0, 5.0} and set(out[1].unique().tolist()) <= {250.0, 255.0}


def test_sweep_equals_per_eps_calls(small_model, batch):
    x, y = batch
    eps = [1, 2, 3, 4, 5]
    res = rf.sweep(small_model, x, y, eps, ("fgsm", "llcm"), return_images=True)
    for name, fn in (("fgsm", rf.fgsm), ("llcm", rf.llcm)):
        assert res.images[name].shape == (5, *x.shape) and res.images[name].dtype == torch.uint8
        for i, e in enumerate(eps):
            single = fn(small_model, x, y, e)
            assert torch.equal(res.images[name][i].float(), single)
            with torch.no_grad():
                assert torch.equal(res.predictions[name][i], small_model(single).argmax(1))
            assert torch.equal(res.linf[name][i], (single - x.float()).flatten(1).abs().amax(1))
    with torch.no_grad():
        assert torch.equal(res.clean_predictions, small_model(x.float()).argmax(1))


def test_sweep_empty_batch_and_no_eps(small_model):
    x = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    res = rf.sweep(small_model, x, torch.zeros(0, dtype=torch.long), [1, 2])
    assert res.predictions["fgsm"].shape == (2, 0)
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    res = rf.sweep(small_model, x, torch.zeros(2, dtype=torch.long), [])
    assert res.predictions["llcm"].shape == (0, 2)


def test_llcm_target_is_argmin_over_all_classes_including_the_true_label():
    model = make_model(seed=3, num_classes=3)
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.1, 3.0, 2.0], [1.0, 0.0, 5.0]])
    assert least_likely_class(logits).tolist() == [2, 0, 1]
    # On a 3-class model, for an image whose least-likely class IS its true label, the LLCM target
    # stays the true label (torchattacks' least-likely mode would pick another class).
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        y_min = model(x.float()).argmin(1)
    y_true = y_min.clone()  # make the true label the least likely one
    expected = reference_attack(model, x, y_min, 2, -1)
    assert torch.equal(rf.llcm(model, x, y_true, 2), expected)
    other = (y_min + 1) % 3
    assert not torch.equal(expected, reference_attack(model, x, other, 2, -1))


def test_attacks_leave_parameters_bn_stats_and_mode_alone(batch):
    model = make_model(seed=4)
    model.train()
    x, y = batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = None
    rf.sweep(model, x, y, [1, 2])
    rf.fgsm(model, x, y, 1)
    rf.llcm(model, x, y, 1)
    assert model.training, "the model's mode is restored"
    assert all(p.grad is None for p in model.parameters()), "parameter gradients untouched"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def test_bad_inputs_raise_clear_errors(small_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="unknown attack"):
        rf.sweep(small_model, x, y, [1], ("pgd",))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        rf.fgsm(small_model, x[:, :2], y, 1)
    with pytest.raises(ValueError, match="labels"):
        rf.fgsm(small_model, x, y[:3], 1)


def test_fgsm_agrees_with_torchattacks(small_model):
    torchattacks = pytest.importorskip("torchattacks")

    class UnitInput(torch.nn.Module):
        """torchattacks works on [0, 1] images: scale back to pixel units for our model."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x * 255.0)

    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (48,), generator=g)
    wrapped = UnitInput(small_model).eval()
    for eps in (1, 2, 5):
        ours = rf.fgsm(small_model, x, y, eps)
        theirs = torchattacks.FGSM(wrapped, eps=eps / 255.0)(x.float() / 255.0, y)
        theirs = torch.round(theirs * 255.0)
        agree = (ours == theirs).float().mean().item()
        assert agree >= 0.999, f"eps {eps}: only {agree:.5f} of pixels agree"
        with torch.no_grad():
            acc_ours = (small_model(ours).argmax(1) == y).float().mean()
            acc_theirs = (small_model(theirs).argmax(1) == y).float().mean()
        assert acc_ours == acc_theirs

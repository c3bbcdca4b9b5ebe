"""The fused CPU ops (relu_pool, stem_pool) and the folded fast path against their references.

- relu_pool / relu_pool_backward are bit-exact with ReLU + average pooling and its autograd backward.
- stem_pool / stem_pool_backward match the reference composition to float rounding, and stem_pool's
  pooled output is bit-exact with relu_pool of its own pre-activation.
- Both compiled copies of each kernel run (AVX2 and portable: RECAPFAST_CPU_ISA=portable).
- The folded LaplacianCNN: logits within 1e-4 relative of the model's, identical predictions; the
  one-backward input gradients give the per-attack reference's adversarial images on >= 99.99 % of
  pixels and the same predictions, on random, synthesized and saturated (|logit gap| > 30) inputs.
"""
from __future__ import annotations

import pytest
import torch

import recapfast as rf
from recapfast import ops
from recapfast.models import fastpath
from recapfast.attacks.single_step import ATTACK_SIGN, autograd_input_gradients, input_gradients, sweep
from recapfast.ops import reference as R

from conftest import make_model, use_backend

CL = torch.channels_last
ISAS = ["native", "portable"]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch, ext):
    """Run the test under the AVX2 copy of the kernels (where the CPU has it) and the portable copy."""
    if request.param == "portable":
        monkeypatch.setenv("RECAPFAST_CPU_ISA", "portable")
    else:
        monkeypatch.delenv("RECAPFAST_CPU_ISA", raising=False)
    with use_backend("ext"):
        yield request.param


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if b.numel() else 0.0


POOL_SHAPES = [(3, 8, 64, 64), (2, 16, 33, 17), (2, 5, 7, 9), (1, 3, 1, 1), (2, 8, 2, 5), (4, 128, 4, 4),
               (2, 12, 11, 11), (1, 32, 6, 3), (2, 64, 5, 8)]


@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_pool_bit_exact(isa, shape, channels_last):
    gen = torch.Generator().manual_seed(sum(shape))
    h = torch.randn(shape, generator=gen)
    h.view(-1)[::7] = 0.0
    h.view(-1)[1::11] = -0.0
    if channels_last:
        h = h.contiguous(memory_format=CL)
    out = ops.relu_pool(h)
    assert torch.equal(out, R.relu_pool_reference(h))
    assert out.is_contiguous(memory_format=CL)
    for k in (1, 2, 3):
        g = torch.randn(k * shape[0], *out.shape[1:], generator=gen)
        got = ops.relu_pool_backward(g, h)
        assert torch.equal(got, R.relu_pool_backward_reference(g, h))
        # ... which is what autograd gives for each of the k stacked cotangents
        hr = h.detach().clone().requires_grad_(True)
        auto = torch.autograd.grad(R.relu_pool_reference(hr), hr, g[-shape[0]:])[0]
        assert torch.equal(got[-shape[0]:], auto)


def test_relu_pool_nan_propagates_like_torch(isa):
    h = torch.randn(1, 8, 6, 6).contiguous(memory_format=CL)
    h[0, 3, 2, 2] = float("nan")
    out = ops.relu_pool(h)
    ref = R.relu_pool_reference(h)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())
    g = torch.randn(1, 8, 3, 3)
    assert torch.equal(ops.relu_pool_backward(g, h), R.relu_pool_backward_reference(g, h))


def test_relu_pool_backward_rejects_bad_batch(isa):
    with pytest.raises(RuntimeError, match="multiple"):
        ops.relu_pool_backward(torch.randn(3, 8, 2, 2), torch.randn(2, 8, 4, 4))


STEM_CASES = [(3, 3, 8, 64, 64), (2, 3, 8, 13, 7), (2, 3, 5, 9, 9), (1, 3, 16, 1, 1), (2, 2, 8, 3, 20),
              (2, 3, 12, 17, 16), (1, 3, 32, 10, 9), (2, 3, 8, 2, 2)]


@pytest.mark.parametrize("case", STEM_CASES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_stem_pool_matches_reference(isa, case, dtype):
    n, cin, cout, h, w = case
    gen = torch.Generator().manual_seed(h * w + cout)
    x = torch.randint(0, 256, (n, cin, h, w), generator=gen).to(dtype)
    if dtype == torch.float32:
        x = x + torch.rand(x.shape, generator=gen)               # non-integer pixels too
    weight = torch.randn(cout, cin, 3, 3, generator=gen) / 20
    bias = torch.randn(cout, generator=gen)
    pooled, pre = ops.stem_pool(x, weight, bias, keep_pre=True)
    ref_pooled, ref_pre = R.stem_pool_reference(x, weight, bias, keep_pre=True)
    assert pooled.shape == ref_pooled.shape and pre.shape == ref_pre.shape
    assert _rel_err(pre, ref_pre) < 2e-6 and _rel_err(pooled, ref_pooled) < 2e-6
    assert torch.equal(pooled, R.relu_pool_reference(pre))            # the pooling is the exact relu_pool
    assert torch.equal(ops.stem_pool(x, weight, bias, keep_pre=False)[0], pooled)
    assert ops.stem_pool(x, weight, bias, keep_pre=False)[1].numel() == 0
    for k in (1, 2):
        g = torch.randn(k * n, cout, *pooled.shape[2:], generator=gen)
        got = ops.stem_pool_backward(g, pre, weight)
        want = R.stem_pool_backward_reference(g, pre, weight)
        assert got.shape == (k * n, cin, h, w) and got.is_contiguous()
        assert _rel_err(got, want) < 2e-6


def test_stem_pool_backward_is_the_autograd_input_gradient(isa):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 12, 10), generator=gen).float().requires_grad_(True)
    weight = torch.randn(8, 3, 3, 3, generator=gen) / 20
    bias = torch.randn(8, generator=gen)
    out = R.relu_pool_reference(R.laplace_conv_reference(x, weight, bias))
    g = torch.randn(out.shape, generator=gen)
    (auto,) = torch.autograd.grad(out, x, g)
    _, pre = ops.stem_pool(x.detach(), weight, bias, keep_pre=True)
    assert _rel_err(ops.stem_pool_backward(g, pre, weight), auto) < 2e-6


def test_empty_batches(isa):
    pooled, pre = ops.stem_pool(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.randn(8, 3, 3, 3),
                                torch.randn(8), keep_pre=True)
    assert pooled.shape == (0, 8, 4, 4) and pre.shape == (0, 8, 8, 8)
    assert ops.stem_pool_backward(torch.zeros(0, 8, 4, 4), pre, torch.randn(8, 3, 3, 3)).shape == (0, 3, 8, 8)
    assert ops.relu_pool(torch.zeros(0, 8, 5, 5)).shape == (0, 8, 3, 3)


# ---- the folded model and the one-backward input gradients ---------------------------------------

def _bundled(name: str) -> rf.LaplacianCNN:
    return rf.load_model(name).eval()


def _saturated_model(x: torch.Tensor) -> rf.LaplacianCNN:
    """The bundled baseline with its classifier scaled so the median |logit gap| on ``x`` is 36: confident
    patches are past |gap| > 30, where p_true - 1 rounds to 0 in float32, but p_other (~e^-gap) stays a normal
    float (gaps beyond ~87 make the reference's own cotangent denormal, where no two implementations agree)."""
    model = _bundled("baseline")
    with torch.no_grad():
        logits = model(x.float())
        scale = 36.0 / float((logits[:, 0] - logits[:, 1]).abs().median())
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model


def _inputs(kind: str, synth_dir) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "random":
        gen = torch.Generator().manual_seed(7)
        return torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8, generator=gen), \
            torch.randint(0, 2, (32,), generator=gen)
    from recapfast.data.folder import PatchDataset, discover, make_loader

    batch = next(iter(make_loader(PatchDataset(discover(synth_dir), 64), 48, 0)))
    return batch.x, batch.y


@pytest.mark.parametrize("model_name", ["baseline", "robust", "saturated", "small"])
@pytest.mark.parametrize("kind", ["random", "synth"])
def test_folded_logits_and_one_backward_match_reference(op_backend, model_name, kind, synth_dir):
    x, y = _inputs(kind, synth_dir)
    model = {"saturated": lambda: _saturated_model(x), "small": make_model}.get(model_name,
                                                                               lambda: _bundled(model_name))()
    assert fastpath.supports(model)
    with torch.inference_mode():
        ref_logits = model(x.float())
    folded = fastpath.FoldedLaplacianCNN(model)
    logits = folded.logits(x)
    assert _rel_err(logits, ref_logits) < 1e-4
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))
    if model_name == "saturated":
        gap = (ref_logits[:, 0] - ref_logits[:, 1]).abs()
        assert (gap > 30).float().mean() >= 0.5                      # the regime where p_true - 1 rounds to 0

    fast_logits, fast = input_gradients(model, x, y, ("fgsm", "llcm"))
    ref_logits2, ref = autograd_input_gradients(model, x, y, ("fgsm", "llcm"))
    assert _rel_err(fast_logits, ref_logits2) < 1e-4
    eps = [1.0, 2.0, 3.0, 4.0, 5.0]
    for name in ("fgsm", "llcm"):
        adv = ops.perturb(x, fast[name], eps, [ATTACK_SIGN[name]] * 5)
        adv_ref = ops.perturb(x, ref[name], eps, [ATTACK_SIGN[name]] * 5)
        assert (adv == adv_ref).float().mean() >= 0.9999, name
        with torch.inference_mode():
            pred = model(adv.flatten(0, 1).float()).argmax(1)
            pred_ref = model(adv_ref.flatten(0, 1).float()).argmax(1)
        assert torch.equal(pred, pred_ref), name


def test_sweep_predictions_equal_the_per_attack_reference(op_backend, synth_dir):
    model = _bundled("baseline")
    x, y = _inputs("synth", synth_dir)
    res = sweep(model, x, y, eps=[1, 2, 3, 4, 5])
    _, ref = autograd_input_gradients(model, x, y, ("fgsm", "llcm"))
    for name in ("fgsm", "llcm"):
        adv_ref = ops.perturb(x, ref[name], [1, 2, 3, 4, 5], [ATTACK_SIGN[name]] * 5)
        with torch.inference_mode():
            pred_ref = model(adv_ref.flatten(0, 1).float()).argmax(1).view(5, -1)
        assert torch.equal(res.predictions[name], pred_ref)


def test_models_that_are_not_plain_laplaciancnn_use_autograd(synth_dir, monkeypatch):
    """A subclass that changes forward (logits * 2) is not folded, and its gradients are right: checked against the
    hand adjoint of the plain model fed the chain-ruled cotangent 2 * (softmax(2 z) - onehot(y)), an independent
    computation (the old test compared input_gradients with the function it calls)."""
    class Wrapped(rf.LaplacianCNN):
        def forward(self, x):
            return super().forward(x) * 2.0

    plain = _bundled("baseline")
    model = Wrapped()
    model.load_state_dict(plain.state_dict())
    model.eval()
    assert not fastpath.supports(model) and not fastpath.supports(model.double())
    model.float()
    x, y = _inputs("random", synth_dir)
    folded = fastpath.FoldedLaplacianCNN(plain)
    z, saved = folded.forward_saving(x)
    cot = 2.0 * (torch.softmax(2.0 * z, 1) - torch.nn.functional.one_hot(y, 2))
    expected = folded.input_grads(saved, cot)

    def refuse(*a, **k):
        raise AssertionError("a Wrapped model went through the fast path")

    monkeypatch.setattr(fastpath, "FoldedLaplacianCNN", refuse)
    logits, grads = input_gradients(model, x, y, ("fgsm",))
    assert torch.allclose(logits, 2.0 * z, rtol=1e-4, atol=1e-4)
    scale = expected.abs().amax()
    assert scale > 0 and ((grads["fgsm"] - expected).abs().amax() / scale) < 1e-4


def test_public_results_are_ordinary_tensors(synth_dir):
    """Issue 23: what rf.sweep and input_gradients return (fast path included) takes in-place updates and autograd."""
    model = _bundled("baseline")
    x, y = _inputs("synth", synth_dir)
    res = sweep(model, x, y, eps=[1, 2])
    for t in (res.clean_logits, res.predictions["fgsm"], res.linf["fgsm"]):
        assert not t.is_inference()
    res.clean_logits.sub_(1)
    res.predictions["llcm"].add_(0)
    logits, grads = input_gradients(model, x, y, ("fgsm", "llcm"))
    logits.mul_(2)
    w = torch.ones(1, requires_grad=True)
    (grads["fgsm"] * w).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_input_gradients_leave_parameters_and_bn_untouched(op_backend):
    model = make_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    input_gradients(model, x, torch.tensor([0, 1, 0, 1]), ("fgsm", "llcm"))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- perturbation metrics (adv_metrics) --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(10, 4, 3, 64, 64), (3, 2, 3, 13, 17), (2, 2, 3, 11, 11), (2, 3, 3, 8, 30),
                                   (4, 2, 3, 37, 45), (1, 1, 3, 11, 40)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_adv_metrics_match_reference(isa, shape, dtype):
    k, b, c, h, w = shape
    gen = torch.Generator().manual_seed(h * w)
    x = torch.randint(0, 256, (b, c, h, w), generator=gen).to(dtype)
    adv = (x.unsqueeze(0).float() + torch.randint(-5, 6, (k, b, c, h, w), generator=gen)).clamp(0, 255).to(dtype)
    adv[0, 0] = x[0]                                                   # one untouched image: SSIM 1, norms 0
    got = ops.adv_metrics(x, adv)
    want = R.adv_metrics_reference(x, adv)
    assert torch.equal(got[..., 1:], want[..., 1:])                   # sums of squares and L-inf: exact
    assert torch.equal(got[..., 0].isnan(), want[..., 0].isnan())
    assert (got[..., 0] - want[..., 0]).nan_to_num(0).abs().max() < 1e-6
    assert got[0, 0, 1] == 0 and got[0, 0, 2] == 0
    if h >= 11 and w >= 11:
        assert abs(float(got[0, 0, 0]) - 1.0) < 1e-6
    fast = ops.adv_metrics(x, adv, ssim=False)
    assert fast[..., 0].isnan().all() and torch.equal(fast[..., 1:], got[..., 1:])


def test_adv_metrics_equal_the_metric_functions(isa):
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    adv = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    stats = rf.metrics.perturbation_stats(x, adv, "full")
    for i in range(2):
        assert (stats["ssim"][i] - rf.ssim(adv[i], x)).abs().max() < 1e-5
        assert torch.allclose(stats["linf"][i].double(), rf.metrics.linf(adv[i], x))
        assert torch.allclose(stats["l2"][i].double(), rf.metrics.l2(adv[i], x))
        assert torch.allclose(10 * torch.log10(255.0 ** 2 / stats["mse"][i].double()), rf.psnr(adv[i], x))
    none = rf.metrics.perturbation_stats(x, adv, "none")
    assert all(v.isnan().all() for v in none.values())
    with pytest.raises(ValueError, match="metrics"):
        rf.metrics.perturbation_stats(x, adv, "some")


def test_adv_metrics_nan_pixels_give_nan_linf(isa):
    x = torch.zeros(1, 3, 12, 12)
    adv = torch.zeros(1, 1, 3, 12, 12)
    adv[0, 0, 1, 3, 3] = float("nan")
    got, want = ops.adv_metrics(x, adv), R.adv_metrics_reference(x, adv)
    assert got[0, 0, 2].isnan() and want[0, 0, 2].isnan()
    assert got[0, 0, 1].isnan() and want[0, 0, 1].isnan()

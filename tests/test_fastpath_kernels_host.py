"""The fast-path ops' CUDA kernels on the CPU, through the host shim: csrc/cuda/relu_pool_kernels.cuh and
adv_metrics_kernels.cuh compiled unchanged by g++ (csrc/host_shim), run over their whole grid behind the
same glue as the CUDA ops (csrc/cuda/fastpath_glue.h), and held to recapfast/ops/reference.py:

- relu_pool / relu_pool_backward bit for bit (the CPU op's standard);
- stem_pool / stem_pool_backward within 2e-6 relative (the CPU op's tolerance), pooled == relu_pool(pre) bit
  for bit;
- adv_metrics: sums of squares and L-inf exactly, SSIM within 1e-6 (the CPU op's tolerances);

on odd sizes, empty batches, NaN, non-contiguous inputs, the 32- and 64-bit index paths (an SM count of
2^20 forces the latter) and several grid shapes. The same checks run against a second build of the shim
with an off-by-one index planted (-DRECAPFAST_PLANT_INDEX_BUG) and must fail there.

The GPU tests at the end run the extension's CUDA ops against the same references (skipped without a GPU).
"""
from __future__ import annotations

import pytest
import torch

from recapfast import ops
from recapfast.ops import reference as R

from shim_build import load_shim
from test_kernels_host import BIG_SM, bits_equal

SM_COUNTS = [0, 1, BIG_SM]   # default grid, long grid-stride loops (8 blocks), 64-bit index math
CL = torch.channels_last


@pytest.fixture(scope="session")
def shim():
    return load_shim()


@pytest.fixture(scope="session")
def broken():
    return load_shim(broken=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if b.numel() else 0.0


def pool_values(shape, seed: int) -> torch.Tensor:
    """randn with exact zeros, -0.0 and a few NaN (ReLU passes NaN on; -0.0 stays)."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(shape, generator=gen)
    flat = h.view(-1)
    flat[::7] = 0.0
    flat[1::11] = -0.0
    flat[5::97] = float("nan")
    return h


# shapes: odd and tiny planes, channel counts that are and are not multiples of 8
POOL_SHAPES = [(2, 8, 17, 23), (3, 5, 7, 9), (1, 3, 1, 1), (2, 16, 2, 5), (1, 1, 6, 1), (2, 12, 11, 11), (1, 32, 4, 3)]


def pool_views(h: torch.Tensor) -> list[torch.Tensor]:
    """h itself, channels_last, and non-contiguous views of the same values (the glue makes them channels_last)."""
    wide = torch.cat([h, h], dim=-1)[..., ::2]                 # strided: every other column of a wider tensor
    return [h, h.contiguous(memory_format=CL), wide, h.transpose(2, 3).contiguous().transpose(2, 3)]


def check_relu_pool(s) -> None:
    for shape in POOL_SHAPES:
        for h in pool_views(pool_values(shape, seed=sum(shape))):
            ref = R.relu_pool_reference(h)
            for sm in SM_COUNTS:
                out = s.relu_pool(h, sm)
                assert out.is_contiguous(memory_format=CL), shape
                assert bits_equal(out.contiguous(), ref.contiguous()), (shape, sm)


def check_relu_pool_backward(s) -> None:
    for shape in POOL_SHAPES:
        h = pool_values(shape, seed=sum(shape) + 1)
        pooled = R.relu_pool_reference(h)
        gen = torch.Generator().manual_seed(len(shape))
        for k in (1, 3):
            g = torch.randn(k * shape[0], *pooled.shape[1:], generator=gen)
            ref = R.relu_pool_backward_reference(g, h)
            for gv, hv in ((g, h), (g.transpose(2, 3).contiguous().transpose(2, 3), h.contiguous(memory_format=CL))):
                for sm in SM_COUNTS:
                    out = s.relu_pool_backward(gv, hv, sm)
                    assert bits_equal(out.contiguous(), ref.contiguous()), (shape, k, sm)


STEM_CASES = [(2, 3, 8, 13, 7), (1, 3, 16, 1, 1), (2, 2, 5, 3, 20), (2, 3, 12, 17, 16), (1, 3, 8, 2, 2)]


def stem_inputs(case, dtype):
    n, cin, cout, h, w = case
    gen = torch.Generator().manual_seed(h * w + cout)
    x = torch.randint(0, 256, (n, cin, h, w), generator=gen).to(dtype)
    if dtype == torch.float32:
        x = x + torch.rand(x.shape, generator=gen)
    return x, torch.randn(cout, cin, 3, 3, generator=gen) / 20, torch.randn(cout, generator=gen), gen


def check_stem_pool(s) -> None:
    for case in STEM_CASES:
        for dtype in (torch.uint8, torch.float32):
            x, weight, bias, gen = stem_inputs(case, dtype)
            ref_pooled, ref_pre = R.stem_pool_reference(x, weight, bias, keep_pre=True)
            for sm in (0, BIG_SM):
                pooled, pre = s.stem_pool(x, weight, bias, True, sm)
                assert pooled.shape == ref_pooled.shape and pre.shape == ref_pre.shape
                assert pooled.is_contiguous(memory_format=CL) and pre.is_contiguous(memory_format=CL)
                assert rel_err(pre, ref_pre) < 2e-6 and rel_err(pooled, ref_pooled) < 2e-6, (case, dtype, sm)
                assert bits_equal(pooled.contiguous(), R.relu_pool_reference(pre).contiguous())
                assert s.stem_pool(x, weight, bias, False, sm)[1].numel() == 0
                for k in (1, 2):
                    g = torch.randn(k * case[0], case[2], *pooled.shape[2:], generator=gen)
                    got = s.stem_pool_backward(g, pre, weight, sm)
                    want = R.stem_pool_backward_reference(g, pre, weight)
                    assert got.shape == want.shape and got.is_contiguous()
                    assert rel_err(got, want) < 2e-6, (case, dtype, sm, k)


ADV_SHAPES = [(3, 2, 3, 13, 17), (2, 2, 3, 11, 11), (2, 3, 3, 8, 30), (2, 2, 3, 37, 45), (1, 1, 3, 11, 40),
              (2, 1, 1, 1, 1)]


def adv_inputs(shape, dtype, seed):
    k, b, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=gen).to(dtype)
    adv = (x.unsqueeze(0).float() + torch.randint(-5, 6, (k, b, c, h, w), generator=gen)).clamp(0, 255).to(dtype)
    adv[0, 0] = x[0]                                               # one untouched image: SSIM 1, norms 0
    return x, adv


def assert_metrics_close(got: torch.Tensor, want: torch.Tensor, what) -> None:
    assert got.shape == want.shape and got.dtype == torch.float64, what
    assert torch.equal(got[..., 1:].nan_to_num(-1), want[..., 1:].nan_to_num(-1)), what    # norms: exact
    assert torch.equal(got[..., 0].isnan(), want[..., 0].isnan()), what
    assert float((got[..., 0] - want[..., 0]).nan_to_num(0).abs().max()) < 1e-6, what


def shim_adv(s, x, adv, ssim=True, sm=0, chunk=1 << 24):
    """The shim's per-plane [K, B, C, 3] combined over channels as ops.adv_metrics does: [K, B, 3]."""
    planes = s.adv_metrics(x, adv, ssim, sm, chunk)
    return torch.stack([planes[..., 0].mean(-1), planes[..., 1].sum(-1), planes[..., 2].amax(-1)], -1)


def check_adv_metrics(s) -> None:
    for shape in ADV_SHAPES:
        for dtype in (torch.uint8, torch.float32):
            x, adv = adv_inputs(shape, dtype, seed=shape[3] * shape[4])
            want = R.adv_metrics_reference(x, adv)
            for sm, chunk in ((0, 1 << 24), (1, 1), (BIG_SM, 700)):    # one chunk; a chunk per plane; a few planes
                got = shim_adv(s, x, adv, True, sm, chunk)
                assert_metrics_close(got, want, (shape, dtype, sm, chunk))
            fast = shim_adv(s, x, adv, False)
            assert fast[..., 0].isnan().all() and torch.equal(fast[..., 1:], want[..., 1:])
    # mixed pixel types, non-contiguous views of both inputs
    x, adv = adv_inputs((3, 2, 3, 16, 24), torch.uint8, seed=9)
    for xv, av in ((x.float(), adv), (x, adv.float()), (x[..., ::2], adv[..., ::2]),
                   (x.transpose(2, 3), adv.transpose(3, 4)), (x.contiguous(memory_format=CL), adv[:, :, :, 1:, 3:])):
        if av.shape[1:] != xv.shape:
            xv = xv[:, :, 1:, 3:]
        assert_metrics_close(shim_adv(s, xv, av, True, 1, 500), R.adv_metrics_reference(xv, av), (xv.shape, av.dtype))


# ------------------------------------------------------------------------------ the kernels, through the shim

def test_relu_pool_bit_exact(shim):
    check_relu_pool(shim)


def test_relu_pool_backward_bit_exact(shim):
    check_relu_pool_backward(shim)


def test_stem_pool_and_backward_within_the_cpu_tolerance(shim):
    check_stem_pool(shim)


def test_adv_metrics_match_reference(shim):
    check_adv_metrics(shim)


def test_nan_propagates_like_the_reference(shim):
    h = torch.randn(2, 8, 9, 7)
    h[0, 3, 2, 2] = float("nan")
    out, ref = shim.relu_pool(h, 1), R.relu_pool_reference(h)
    assert out.isnan().any() and bits_equal(out.contiguous(), ref.contiguous())
    g = torch.randn(4, 8, 5, 4)
    g[1, 2, 1, 1] = float("nan")
    assert bits_equal(shim.relu_pool_backward(g, h, 1).contiguous(), R.relu_pool_backward_reference(g, h).contiguous())
    x = torch.zeros(1, 3, 12, 12)
    adv = torch.zeros(2, 1, 3, 12, 12)
    adv[1, 0, 1, 3, 3] = float("nan")
    got, want = shim_adv(shim, x, adv), R.adv_metrics_reference(x, adv)
    assert got[1, 0, 1].isnan() and got[1, 0, 2].isnan() and want[1, 0, 2].isnan()
    assert got[0, 0, 1] == 0 and got[0, 0, 2] == 0 and abs(float(got[0, 0, 0]) - 1.0) < 1e-6


def test_empty_batches(shim):
    assert shim.relu_pool(torch.zeros(0, 8, 5, 5), 0).shape == (0, 8, 3, 3)
    assert shim.relu_pool_backward(torch.zeros(0, 8, 3, 3), torch.zeros(0, 8, 5, 5), 0).shape == (0, 8, 5, 5)
    assert shim.relu_pool_backward(torch.zeros(0, 8, 3, 3), torch.randn(2, 8, 5, 5), 0).shape == (0, 8, 5, 5)
    w, b = torch.randn(8, 3, 3, 3), torch.randn(8)
    pooled, pre = shim.stem_pool(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), w, b, True, 0)
    assert pooled.shape == (0, 8, 4, 4) and pre.shape == (0, 8, 8, 8)
    assert shim.stem_pool_backward(torch.zeros(0, 8, 4, 4), pre, w, 0).shape == (0, 3, 8, 8)
    for k, batch in ((0, 2), (2, 0)):
        x, adv = torch.zeros(batch, 3, 12, 12), torch.zeros(k, batch, 3, 12, 12)
        assert shim.adv_metrics(x, adv, True, 0, 1 << 24).shape == (k, batch, 3, 3)


def test_index_width_follows_the_sizes(shim):
    assert shim.fastpath_index_bits("relu_pool", 512 * 8 * 256 * 256, 0, 0, 0, 132) == 32
    assert shim.fastpath_index_bits("relu_pool", 2 ** 31 - 100, 0, 0, 0, 132) == 64
    assert shim.fastpath_index_bits("relu_pool", 100, 0, 0, 0, BIG_SM) == 64
    # adv_metrics: 10 eps x 2 attacks x 64 images x 3 channels at 256 px fits; at 2048 px it does not
    assert shim.fastpath_index_bits("adv_metrics", 20 * 64 * 3, 256, 256, 256, 132) == 32
    assert shim.fastpath_index_bits("adv_metrics", 20 * 64 * 3, 4, 2048, 2048, 132) == 64
    assert shim.fastpath_index_bits("adv_metrics", 6, 6, 12, 12, BIG_SM) == 64


def test_bad_arguments_are_rejected_by_the_glue(shim):
    with pytest.raises(RuntimeError, match="float32"):
        shim.relu_pool(torch.zeros(1, 8, 4, 4, dtype=torch.float64), 0)
    with pytest.raises(RuntimeError, match="multiple"):
        shim.relu_pool_backward(torch.randn(3, 8, 2, 2), torch.randn(2, 8, 4, 4), 0)
    with pytest.raises(RuntimeError, match="adv must be"):
        shim.adv_metrics(torch.zeros(2, 3, 12, 12), torch.zeros(1, 3, 3, 12, 12), True, 0, 1 << 24)


# ------------------------------------------------------------------------ a planted off-by-one index fails

@pytest.mark.parametrize("check", [check_relu_pool, check_relu_pool_backward, check_stem_pool, check_adv_metrics],
                         ids=["relu_pool", "relu_pool_backward", "stem_pool", "adv_metrics"])
def test_a_planted_index_bug_fails_the_same_checks(broken, check):
    """The shim built with -DRECAPFAST_PLANT_INDEX_BUG (one window/loop bound off by one in each kernel) must
    fail every check above that passes for the real kernels: the checks can see a broken index."""
    with pytest.raises(AssertionError):
        check(broken)


# ------------------------------------------------------ dispatch: the wrappers send CUDA tensors to the extension

def test_fast_path_wrappers_dispatch_cuda_tensors_to_an_extension_with_cuda(monkeypatch):
    """No GPU needed: stand-ins that say they live on CUDA, an extension that says it has CUDA kernels. Each
    wrapper must call its extension op (before issue 25 they went to the references on CUDA)."""
    from types import SimpleNamespace

    from recapfast.ops import _build

    def on_cuda(shape, dtype=torch.float32):
        return SimpleNamespace(shape=shape, dtype=dtype, device=torch.device("cuda"), dim=lambda: len(shape))

    monkeypatch.setattr(ops, "active_backend", lambda: "ext")
    monkeypatch.setattr(_build.STATE, "with_cuda", True)
    calls = []
    for name in ("relu_pool", "relu_pool_backward", "stem_pool", "stem_pool_backward", "adv_metrics"):
        monkeypatch.setattr(torch.ops.recapfast, name, lambda *a, _n=name: calls.append(_n) or torch.zeros(2, 1, 3, 3),
                            raising=False)
    h, g, w, b = on_cuda((2, 8, 9, 9)), on_cuda((4, 8, 5, 5)), on_cuda((8, 3, 3, 3)), on_cuda((8,))
    ops.relu_pool(h)
    ops.relu_pool_backward(g, h)
    ops.stem_pool(on_cuda((2, 3, 9, 9), torch.uint8), w, b)
    ops.stem_pool_backward(g, h, w)
    ops.adv_metrics(on_cuda((1, 3, 12, 12)), on_cuda((2, 1, 3, 12, 12)))
    assert calls == ["relu_pool", "relu_pool_backward", "stem_pool", "stem_pool_backward", "adv_metrics"]


# ---------------------------------------------------------------- the extension's CUDA ops (GPU only)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


@pytest.fixture
def cuda_ext(ext):
    """The extension with its CUDA kernels, TF32 off (float32 tolerances)."""
    from conftest import use_backend
    from tf32_report import tf32

    if not ext.with_cuda:
        pytest.fail("a GPU is visible but the extension was built without CUDA")
    with tf32(False), use_backend("ext"):
        yield torch.ops.recapfast


def same_bits_any_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """bits_equal, except that a NaN matches any NaN: the GPU returns its canonical NaN (0x7fffffff) for an
    operation on a NaN, where x86 keeps the operand's payload."""
    na, nb = a.isnan(), b.isnan()
    return torch.equal(na, nb) and bits_equal(a.masked_fill(na, 0.0), b.masked_fill(nb, 0.0))


@gpu
def test_cuda_relu_pool_bit_exact(cuda_ext):
    for shape in POOL_SHAPES:
        for h in pool_views(pool_values(shape, seed=sum(shape))):
            out = ops.relu_pool(h.cuda())
            assert out.is_contiguous(memory_format=CL)
            assert same_bits_any_nan(out.cpu().contiguous(), R.relu_pool_reference(h).contiguous()), shape
            g = torch.randn(2 * shape[0], *out.shape[1:])
            got = ops.relu_pool_backward(g.cuda(), h.cuda()).cpu()
            assert same_bits_any_nan(got.contiguous(), R.relu_pool_backward_reference(g, h).contiguous()), shape


@gpu
def test_cuda_stem_pool_and_adv_metrics_match_the_references(cuda_ext):
    for case in STEM_CASES:
        x, weight, bias, gen = stem_inputs(case, torch.uint8)
        ref_pooled, ref_pre = R.stem_pool_reference(x, weight, bias, keep_pre=True)
        pooled, pre = ops.stem_pool(x.cuda(), weight.cuda(), bias.cuda(), keep_pre=True)
        assert rel_err(pre.cpu(), ref_pre) < 1e-5 and rel_err(pooled.cpu(), ref_pooled) < 1e-5, case
        g = torch.randn(2 * case[0], case[2], *pooled.shape[2:], generator=gen)
        got = ops.stem_pool_backward(g.cuda(), ref_pre.cuda(), weight.cuda()).cpu()
        assert rel_err(got, R.stem_pool_backward_reference(g, ref_pre, weight)) < 1e-5, case
    for shape in ADV_SHAPES:
        x, adv = adv_inputs(shape, torch.uint8, seed=3)
        assert_metrics_close(ops.adv_metrics(x.cuda(), adv.cuda()).cpu(), R.adv_metrics_reference(x, adv), shape)


@gpu
def test_cuda_fast_path_dispatches_to_the_extension(cuda_ext, monkeypatch):
    calls = []
    for name in ("relu_pool", "relu_pool_backward", "stem_pool", "stem_pool_backward", "adv_metrics"):
        real = getattr(torch.ops.recapfast, name)
        monkeypatch.setattr(torch.ops.recapfast, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    from recapfast.models.fastpath import FoldedLaplacianCNN
    from conftest import make_model, random_batch

    folded = FoldedLaplacianCNN(make_model(seed=1).cuda())
    x, _ = random_batch(4, 32, seed=2)
    logits, saved = folded.forward_saving(x.cuda())
    folded.input_grads(saved, torch.randn(8, logits.shape[1], device="cuda"))
    ops.adv_metrics(x.cuda(), x.cuda().unsqueeze(0))
    assert set(calls) == {"relu_pool", "relu_pool_backward", "stem_pool", "stem_pool_backward", "adv_metrics"}

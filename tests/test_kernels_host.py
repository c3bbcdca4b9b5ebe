"""The CUDA kernels' logic on the CPU: csrc/cuda/*_kernels.cuh compiled unchanged by g++ through the host
shim (csrc/host_shim/cuda_runtime.h), launched over their whole grid sequentially, behind the same glue
as the real CUDA ops (csrc/cuda/*_glue.h), held bit for bit to recapfast/ops/reference.py.

No GPU needed: this runs in every CI run. The test-only extension (csrc/host_shim/host_kernels.cpp) is
built once per session and cached under TORCH_EXTENSIONS_DIR like the main extension, with UBSan's
alignment check, so a vector access a GPU would fault on fails here too.
What the shim does not cover: the CUDA compiler's code generation, the device's memory system, and
the .cu files' device guard / stream / SM-count lines (tests/test_ops.py's CUDA cases, on a GPU).
"""
from __future__ import annotations

import pytest
import torch

from recapfast import ops

from shim_build import load_shim

BIG_SM = 1 << 20      # an SM count this large makes the launchers pick 64-bit index math
SM_COUNTS = [0, 1, BIG_SM]   # 0: the launchers' default grid; 1: 8 blocks, long grid-stride loops


@pytest.fixture(scope="session")
def shim():
    return load_shim()


@pytest.fixture(autouse=True)
def no_misaligned_access(capfd):
    """UBSan (see SHIM_CFLAGS) prints 'runtime error: load of misaligned address ...' on stderr and goes on.

    It reports each source location once per process, so later tests may not see a repeat. A misaligned
    float4 access can instead crash the process (the compiler uses aligned SSE moves for a 16-byte-aligned
    type), which fails the run just the same, with faulthandler naming the test."""
    yield
    err = capfd.readouterr().err
    assert "runtime error" not in err, f"misaligned vector access (a GPU would fault):\n{err}"


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (so -0.0 != +0.0 and NaN payloads count)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float32:
        a, b = a.view(torch.int32), b.view(torch.int32)
    elif a.dtype == torch.float64:
        a, b = a.view(torch.int64), b.view(torch.int64)
    return torch.equal(a, b)


def same_bits_but_zero_sign(a: torch.Tensor, b: torch.Tensor) -> bool:
    """bits_equal after +0.0 (which turns -0.0 into +0.0). For the Laplacian against the reference
    convolution: where every term is zero and the centre is -0.0, the kernels' 4c - up - ... gives -0.0
    and the convolution's sum (started from +0.0) gives +0.0; the same value, another sign bit."""
    return bits_equal(a + 0.0, b + 0.0) if a.is_floating_point() else bits_equal(a, b)


# ----------------------------------------------------------------------------------------------- perturb

EPS_SETS = [
    ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5),
    ([0.5, 1.5, 2.5, 1.0, 0.25, 3.5], [1.0, -1.0, 1.0, -1.0, -1.0, 1.0]),   # half-integers: ties to even
    ([7.75, 100.0, 0.0], [-1.0, 1.0, -1.0]),
    ([0.5 * i for i in range(1, 21)], [(-1.0) ** i for i in range(20)]),     # 20 eps: two launches of <= 16
]
# numel % 4 == 3, 3, 3, 0, 2, 1, 0
PERTURB_SHAPES = [(4, 3, 67, 71), (3, 3, 7, 13), (1, 3, 1, 1), (2, 3, 5, 4), (1, 1, 1, 2), (1, 1, 1, 1), (2, 3, 6, 6)]


def perturb_values(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
    else:
        # Half-integers (ties after +-0.5 eps), values outside [0, 255] (clipping) and -0.0.
        x = torch.randint(-6, 522, (n,), generator=gen).to(torch.float32) / 2
        x[3::17] = -0.0
    grad = torch.randn(n, generator=gen)
    grad[0::7] = 0.0
    grad[1::11] = -0.0
    grad[2::13] = float("nan")          # torch.sign(nan) == 0
    grad[4::19] = float("inf")
    grad[5::23] = -float("inf")
    grad[6::29] = 1e-45                 # float32 denormal: still positive
    return x, grad


def shim_perturb(shim, x, grad, eps, signs, quantize, sm_count=0, out_offset=0):
    """The shim's result, checked identical for two different fills of the output buffer (so every element
    was written) and for guard zones left intact around it (the call fails otherwise)."""
    outs = [shim.perturb(x, grad, eps, signs, quantize, sm_count, out_offset, fill) for fill in (0x00, 0xFF)]
    assert bits_equal(outs[0], outs[1]), "some output elements were never written"
    return outs[0]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("shape", PERTURB_SHAPES)
def test_perturb_bit_exact(shim, dtype, quantize, shape):
    n = torch.Size(shape).numel()
    x, grad = perturb_values(n, dtype, seed=n)
    x, grad = x.view(shape), grad.view(shape)
    for eps, signs in EPS_SETS:
        ref = ops.perturb_reference(x, grad, eps, signs, quantize)
        for sm_count in SM_COUNTS:
            out = shim_perturb(shim, x, grad, eps, signs, quantize, sm_count)
            assert bits_equal(out, ref), f"eps={eps} sm_count={sm_count}: {(out != ref).sum().item()} differ"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("quantize", [True, False])
def test_perturb_misaligned_views(shim, dtype, quantize):
    """Contiguous views at storage offsets 0..3 (the glue passes them on as they are: misaligned pointers),
    x and grad at the same offset (vector body after a scalar head) or different ones (scalar kernel).
    The memory around each view holds values that change the result if a kernel reads outside the view."""
    shape = (2, 3, 9, 11)
    n = torch.Size(shape).numel()
    x_all, g_all = perturb_values(n + 8, dtype, seed=5)
    x_all[:4] = 255 if dtype == torch.uint8 else float("nan")
    x_all[n + 4:] = x_all[:4]
    g_all[:4] = g_all[n + 4:] = 1.0
    eps, signs = EPS_SETS[1]
    for ox in range(4):
        for og in range(4):
            x, grad = x_all[ox:ox + n].view(shape), g_all[og:og + n].view(shape)
            ref = ops.perturb_reference(x, grad, eps, signs, quantize)
            for out_offset in range(4):
                out = shim_perturb(shim, x, grad, eps, signs, quantize, sm_count=1, out_offset=out_offset)
                assert bits_equal(out, ref), (ox, og, out_offset)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_perturb_non_contiguous_and_float64_grad(shim, dtype):
    x, grad = perturb_values(3 * 3 * 20 * 34, dtype, seed=3)
    x, grad = x.view(3, 3, 20, 34), grad.view(3, 3, 20, 34)
    views = [
        (x[..., ::2], grad[..., ::2]),                                                    # strided
        (x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), grad.transpose(2, 3).contiguous().transpose(2, 3)),
        (x[:, :, 1:, 3:], grad[:, :, 1:, 3:]),                                            # odd crop
        (x, grad.to(torch.float64)),
        (x, (grad * 1e-300).to(torch.float64)),   # underflows to +-0 in float32: sign is taken after the cast
    ]
    eps, signs = EPS_SETS[1]
    for xv, gv in views:
        for quantize in (True, False):
            ref = ops.perturb_reference(xv, gv, eps, signs, quantize)
            assert bits_equal(shim_perturb(shim, xv, gv, eps, signs, quantize, sm_count=1), ref)


@pytest.mark.parametrize("quantize", [True, False])
def test_perturb_empty(shim, quantize):
    before = shim.launches()
    x, grad = torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, 3, 8, 8)
    out = shim_perturb(shim, x, grad, [1.0, 2.0], [1.0, -1.0], quantize)
    assert out.shape == (2, 0, 3, 8, 8) and out.dtype == (torch.uint8 if quantize else torch.float32)
    x, grad = perturb_values(2 * 3 * 8 * 8, torch.uint8, seed=1)
    out = shim_perturb(shim, x.view(2, 3, 8, 8), grad.view(2, 3, 8, 8), [], [], quantize)
    assert out.shape == (0, 2, 3, 8, 8)
    assert shim.launches() == before   # nothing to do: no launch at all


def test_perturb_splits_long_sweeps_into_launches_of_16(shim):
    x, grad = perturb_values(100, torch.uint8, seed=2)
    before = shim.launches()
    shim.perturb(x, grad, [1.0] * 33, [1.0] * 33, True, 0, 0, 0)
    assert shim.launches() - before == 3


def test_index_width_follows_the_sizes(shim):
    assert shim.index_bits("perturb", 5, 64 * 3 * 256 * 256, 0, 132) == 32
    assert shim.index_bits("perturb", 16, 2 ** 27, 0, 132) == 64      # 16 rows of 2^27 elements pass 2^31
    assert shim.index_bits("perturb", 5, 100, 0, BIG_SM) == 64
    assert shim.index_bits("laplacian", 0, 64 * 3 * 512 * 512, 512, 132) == 32
    assert shim.index_bits("laplacian", 0, 2 ** 31 - 10, 512, 132) == 64
    assert shim.index_bits("laplacian", 0, 100, 10, BIG_SM) == 64


# ------------------------------------------------------------------------------------------- laplacian

LAPLACE_SHAPES = [(2, 3, 17, 23), (1, 3, 1, 1), (3, 3, 2, 5), (2, 3, 1, 9), (1, 2, 9, 1), (1, 1, 4, 4)]


def laplace_values(n: int, dtype: torch.dtype, seed: int, exact: bool = True) -> torch.Tensor:
    """uint8 pixels; or floats that are multiples of 1/64 in [-300, 300] (every sum of five of them is
    exact in float32, so any summation order, the reference convolution's included, gives the same bits),
    with -0.0 sprinkled in; or (exact=False) arbitrary floats with a few NaN."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
    if not exact:
        x = (torch.randn(n, generator=gen, dtype=torch.float64) * 1e3).to(dtype)
        x[4::97] = float("nan")
        return x
    x = (torch.randint(-300 * 64, 300 * 64, (n,), generator=gen).to(torch.float64) / 64).to(dtype)
    x[1::9] = -0.0
    return x


def laplacian_same_order(x: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic, in its order, in PyTorch: 4c - up - down - left - right, zero outside."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    p = torch.nn.functional.pad(x, (1, 1, 1, 1))
    c = p[..., 1:-1, 1:-1]
    return 4 * c - p[..., :-2, 1:-1] - p[..., 2:, 1:-1] - p[..., 1:-1, :-2] - p[..., 1:-1, 2:]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", LAPLACE_SHAPES)
def test_laplacian_bit_exact(shim, dtype, shape):
    x = laplace_values(torch.Size(shape).numel(), dtype, seed=sum(shape)).view(shape)
    ref = ops.laplacian(x)
    for sm_count in SM_COUNTS:
        out = shim.laplacian(x, sm_count)
        assert same_bits_but_zero_sign(out, ref) and bits_equal(out, laplacian_same_order(x)), sm_count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_laplacian_arbitrary_floats(shim, dtype):
    """Inexact sums: bit for bit the kernel's own order (NaN reaching the 5-point neighbourhood), and
    within rounding of the reference convolution where no NaN is involved (the reference's 3x3
    convolution also multiplies the diagonal neighbours by 0, so it spreads a NaN to all 8 neighbours)."""
    shape = (3, 3, 19, 21)
    x = laplace_values(torch.Size(shape).numel(), dtype, seed=7, exact=False).view(shape)
    out = shim.laplacian(x, 1)
    assert bits_equal(out, laplacian_same_order(x)) and out.isnan().any()
    finite = x.nan_to_num()
    bound = 8 * torch.finfo(dtype).eps * float(finite.abs().max()) * 8
    torch.testing.assert_close(shim.laplacian(finite, 1), ops.laplacian(finite), rtol=0, atol=bound)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_laplacian_views(shim, dtype):
    """Non-contiguous views (the glue makes them contiguous) and contiguous views at odd storage offsets
    between NaN / 255 guards (passed on as they are): a read outside the view changes the result."""
    shape = (2, 3, 16, 30)
    n = torch.Size(shape).numel()
    x = laplace_values(n, dtype, seed=3).view(shape)
    views = [x[..., ::2], x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3), x[:, 1:, 3:, 1:]]
    guard = 255 if dtype == torch.uint8 else float("nan")
    for offset in (1, 2, 3):
        buf = torch.full((n + 2 * offset,), guard, dtype=dtype)
        buf[offset:offset + n] = x.reshape(-1)
        views.append(buf[offset:offset + n].view(shape))
    for v in views:
        ref = ops.laplacian(v)
        for sm_count in SM_COUNTS:
            assert same_bits_but_zero_sign(shim.laplacian(v, sm_count), ref)


def test_laplacian_empty(shim):
    for shape in [(0, 3, 4, 4), (2, 3, 0, 5), (2, 3, 5, 0)]:
        out = shim.laplacian(torch.zeros(shape, dtype=torch.uint8), 0)
        assert out.shape == shape and out.dtype == torch.float32


# ------------------------------------------------- laplace_conv through the shim == the CPU extension, bit for bit

def conv_inputs(shape, dtype, seed, cout=5):
    gen = torch.Generator().manual_seed(seed)
    x = laplace_values(torch.Size(shape).numel(), dtype, seed).view(shape)
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = (torch.randn(cout, shape[1], 3, 3, generator=gen, dtype=torch.float64) / 10).to(wdtype)
    b = torch.randn(cout, generator=gen, dtype=torch.float64).to(wdtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (3, 3, 2, 5), (1, 3, 1, 1)])
def test_laplace_conv_and_backward_match_the_cpu_extension(shim, ext, dtype, shape):
    """Same glue (laplace_conv_common.h), same ATen convolution: the GPU kernel's Laplacian and the CPU
    kernel's give the same bits, so the whole op agrees bit for bit; and it agrees with the reference."""
    x, w, b = conv_inputs(shape, dtype, seed=len(shape) + shape[-1])
    out = shim.laplace_conv(x, w, b, 1)
    assert bits_equal(out, torch.ops.recapfast.laplace_conv(x, w, b))
    ref = ops.laplace_conv_reference(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
    for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True]):
        got = shim.laplace_conv_backward(go, x, w, mask, 1)
        want = torch.ops.recapfast.laplace_conv_backward(go, x, w, mask)
        assert all(bits_equal(g, r) for g, r in zip(got, want)), mask


def test_kernel_wrong_arguments_are_rejected_by_the_glue(shim):
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="same length"):
        shim.perturb(x, torch.zeros(2, 3, 4, 4), [1.0], [1.0, -1.0], True, 0, 0, 0)
    with pytest.raises(RuntimeError, match="uint8 or float32"):
        shim.perturb(x.double(), torch.zeros(2, 3, 4, 4), [1.0], [1.0], True, 0, 0, 0)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        shim.laplacian(x.to(torch.int32), 0)

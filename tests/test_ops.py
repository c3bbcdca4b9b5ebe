"""The C++/CUDA ops against their PyTorch references, the extension loader, and backend parity.

The extension is built once per session (the ``ext`` fixture), cached under TORCH_EXTENSIONS_DIR.
CUDA variants run only where torch sees a GPU and the extension was compiled with CUDA.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from recapfast import ops
from recapfast.ops import _build

from conftest import random_batch, use_backend
from tf32_report import tf32

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


backend = use_backend


@pytest.fixture(autouse=True)
def no_tf32():
    """The CUDA tolerance tests compare float32 at rel 1e-5: TF32 (Ampere+, cuDNN's default for convolutions)
    would fail them. Off here, restored after; tests/tf32_report.py measures what TF32 costs."""
    with tf32(False):
        yield


@pytest.fixture
def device(request, ext):
    name = request.param
    if name == "cuda" and not ext.with_cuda:
        pytest.skip("extension compiled without CUDA")
    return torch.device(name)


def as_device(params):
    return pytest.mark.parametrize("device", params, indirect=True)


def rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """|actual - expected| <= rel * max|expected| (elementwise rel is meaningless near zero)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1.0))


# ----------------------------------------------------------------------------------------------- perturb

EPS_SETS = [
    ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5),
    ([0.5, 1.5, 2.5, 1.0, 0.25, 3.5], [1.0, -1.0, 1.0, -1.0, -1.0, 1.0]),   # half-integers: ties to even
    ([7.75, 100.0, 0.0], [-1.0, 1.0, -1.0]),
]


def perturb_inputs(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    else:
        # Half-integers (ties after +-0.5 eps) and values outside [0, 255] (clipping).
        x = torch.randint(-6, 522, shape, generator=gen).to(torch.float32) / 2
    grad = torch.randn(shape, generator=gen)
    flat = grad.view(-1)
    if flat.numel() >= 4:
        flat[0::7] = 0.0
        flat[1::11] = -0.0
        flat[2::13] = float("nan")   # torch.sign(nan) == 0
    return x.to(device), grad.to(device)


@as_device(DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 67, 71), (3, 3, 7, 13), (1, 3, 1, 1), (2, 3, 5, 4)])
def test_perturb_bit_exact(device, dtype, quantize, shape):
    x, grad = perturb_inputs(shape, dtype, device)
    for eps, signs in EPS_SETS:
        out = torch.ops.recapfast.perturb(x, grad, eps, signs, quantize)
        ref = ops.perturb_reference(x, grad, eps, signs, quantize)
        assert out.dtype == ref.dtype and out.shape == ref.shape and out.is_contiguous()
        assert torch.equal(out, ref), f"eps={eps}: {(out != ref).sum().item()} elements differ"


@as_device(DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_perturb_non_contiguous_and_float64_grad(device, dtype):
    x, grad = perturb_inputs((3, 3, 20, 34), dtype, device, seed=3)
    views = [
        (x[..., ::2], grad[..., ::2]),                                                    # strided
        (x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), grad.transpose(2, 3).contiguous().transpose(2, 3)),
        (x, grad.to(torch.float64)),
    ]
    eps, signs = EPS_SETS[1]
    for xv, gv in views:
        for quantize in (True, False):
            out = torch.ops.recapfast.perturb(xv, gv, eps, signs, quantize)
            ref = ops.perturb_reference(xv, gv, eps, signs, quantize)
            assert out.is_contiguous() and torch.equal(out, ref)


@as_device(DEVICES)
@pytest.mark.parametrize("quantize", [True, False])
def test_perturb_empty(device, quantize):
    x, grad = perturb_inputs((0, 3, 8, 8), torch.uint8, device)
    out = torch.ops.recapfast.perturb(x, grad, [1.0, 2.0], [1.0, -1.0], quantize)
    assert out.shape == (2, 0, 3, 8, 8) and out.dtype == (torch.uint8 if quantize else torch.float32)
    x, grad = perturb_inputs((2, 3, 8, 8), torch.uint8, device)
    out = torch.ops.recapfast.perturb(x, grad, [], [], quantize)
    assert torch.equal(out, ops.perturb_reference(x, grad, [], [], quantize))


def test_perturb_rejects_bad_arguments(ext):
    x, grad = perturb_inputs((2, 3, 4, 4), torch.uint8, "cpu")
    with pytest.raises(RuntimeError, match="same length"):
        torch.ops.recapfast.perturb(x, grad, [1.0], [1.0, -1.0], True)
    with pytest.raises(RuntimeError, match="differs"):
        torch.ops.recapfast.perturb(x, grad[:1], [1.0], [1.0], True)
    with pytest.raises(ValueError, match="same length"):
        ops.perturb(x, grad, [1.0], [], True)


def test_perturb_wrapper_dispatches_to_extension(ext):
    x, grad = perturb_inputs((2, 3, 9, 9), torch.uint8, "cpu")
    with backend("ext"):
        assert ops.active_backend() == "ext"
        out = ops.perturb(x, grad, [1, 2], [1, -1])          # ints are accepted for float[]
    assert torch.equal(out, ops.perturb_reference(x, grad, [1, 2], [1, -1]))


# ------------------------------------------------------------------------------------------ laplace_conv

LAPLACE_SHAPES = [(2, 3, 17, 23), (1, 3, 1, 1), (3, 3, 2, 5), (2, 3, 1, 9)]


def laplace_inputs(shape, dtype, device, cout=5, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    else:
        x = (torch.rand(shape, generator=gen, dtype=torch.float64) * 255).to(dtype)
    w = torch.randn(cout, shape[1], 3, 3, generator=gen, dtype=torch.float64) / 10
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    return x.to(device), w.to(device, wdtype), None if b is None else b.to(device, wdtype)


@as_device(DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", LAPLACE_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_laplace_conv_forward(device, dtype, shape, bias):
    x, w, b = laplace_inputs(shape, dtype, device, bias=bias)
    rel_close(torch.ops.recapfast.laplace_conv(x, w, b), ops.laplace_conv_reference(x, w, b))


@as_device(DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_laplace_conv_forward_non_contiguous(device, dtype):
    x, w, b = laplace_inputs((2, 3, 16, 30), dtype, device)
    for xv in (x[..., ::2], x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
        rel_close(torch.ops.recapfast.laplace_conv(xv, w, b), ops.laplace_conv_reference(xv, w, b))


def grads_of(fn, x, w, b, grad_out):
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
    return torch.autograd.grad(fn(x, w, b), inputs, grad_out)


@as_device(DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (3, 3, 2, 5)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_laplace_conv_backward(device, shape, dtype, bias):
    x, w, b = laplace_inputs(shape, dtype, device, bias=bias, seed=1)
    if dtype.is_floating_point:
        x.requires_grad_(True)
    w.requires_grad_(True)
    if b is not None:
        b.requires_grad_(True)
    grad_out = torch.randn(shape[0], w.shape[0], *shape[2:], generator=torch.Generator().manual_seed(2)).to(device)
    got = grads_of(torch.ops.recapfast.laplace_conv, x, w, b, grad_out)
    want = grads_of(ops.laplace_conv_reference, x, w, b, grad_out)
    assert len(got) == len(want)
    for g, r in zip(got, want):
        rel_close(g, r)


@as_device(DEVICES)
def test_laplace_conv_double_backward_matches_reference(device):
    """Robust training: grad wrt x with create_graph, then a loss on it backpropagated into the weights."""
    x, w, b = laplace_inputs((2, 3, 12, 10), torch.float32, device, seed=4)
    results = []
    for fn in (torch.ops.recapfast.laplace_conv, ops.laplace_conv_reference):
        xi, wi, bi = x.clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        out = fn(xi, wi, bi)
        loss = (out.tanh() * out).sum()
        (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
        penalty = (gx ** 2).sum() + loss
        penalty.backward()
        results.append((gx.detach(), wi.grad, bi.grad, xi.grad))
    for got, want in zip(*results):
        rel_close(got, want, rel=2e-5)


@as_device(DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_laplace_conv_gradcheck(device, bias):
    x, w, b = laplace_inputs((2, 3, 5, 6), torch.float64, device, cout=2, bias=bias, seed=5)
    args = tuple(t.requires_grad_(True) for t in (x, w, b) if t is not None)
    fn = (lambda x, w, b: torch.ops.recapfast.laplace_conv(x, w, b)) if bias else \
        (lambda x, w: torch.ops.recapfast.laplace_conv(x, w, None))
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


@as_device(DEVICES)
def test_laplace_conv_backward_op_gradcheck(device):
    x, w, _ = laplace_inputs((2, 3, 4, 5), torch.float64, device, cout=2, seed=6)
    go = torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device)
    args = tuple(t.requires_grad_(True) for t in (go, x, w))
    fn = lambda go, x, w: torch.ops.recapfast.laplace_conv_backward(go, x, w, [True, True, True])  # noqa: E731
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


@as_device(DEVICES)
def test_laplace_conv_empty_batch(device):
    x, w, b = laplace_inputs((0, 3, 6, 6), torch.float32, device)
    w.requires_grad_(True)
    out = torch.ops.recapfast.laplace_conv(x, w, b)
    assert out.shape == (0, w.shape[0], 6, 6)
    out.sum().backward()
    assert torch.count_nonzero(w.grad) == 0


def test_laplace_conv_rejects_bad_arguments(ext):
    x, w, b = laplace_inputs((1, 3, 4, 4), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="input channels"):
        torch.ops.recapfast.laplace_conv(x[:, :2], w, b)
    with pytest.raises(RuntimeError, match="uint8, float32 or float64"):
        torch.ops.recapfast.laplace_conv(x.to(torch.int32), w, b)


# --------------------------------------------------------------------------------------------- opcheck

@as_device(DEVICES)
def test_opcheck_perturb(device):
    for dtype in (torch.uint8, torch.float32):
        x, grad = perturb_inputs((2, 3, 5, 6), dtype, device)
        for quantize in (True, False):
            torch.library.opcheck(torch.ops.recapfast.perturb.default, (x, grad, [1.0, 2.5], [1.0, -1.0], quantize))


@as_device(DEVICES)
def test_opcheck_laplace_conv(device):
    x, w, b = laplace_inputs((2, 3, 5, 6), torch.float32, device, cout=4)
    torch.library.opcheck(torch.ops.recapfast.laplace_conv.default,
                          (x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)))
    x8, w, _ = laplace_inputs((2, 3, 5, 6), torch.uint8, device, cout=4)
    torch.library.opcheck(torch.ops.recapfast.laplace_conv.default, (x8, w.requires_grad_(True), None))
    go = torch.randn(2, 4, 5, 6, device=device)
    for mask in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(torch.ops.recapfast.laplace_conv_backward.default, (go, x.detach(), w.detach(), mask))


# ------------------------------------------------------------------------------------ backend parity

def make_model(seed=0):
    from recapfast.models.laplacian import LaplacianCNN

    torch.manual_seed(seed)
    model = LaplacianCNN(widths=(4, 8, 8, 16, 16))
    with backend("torch"), torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).float())
    return model.eval()


def test_model_logits_match_between_backends(ext):
    model = make_model()
    x = torch.randint(0, 256, (8, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    logits = {}
    for name in ("ext", "torch"):
        with backend(name), torch.no_grad():
            assert ops.active_backend() == name
            logits[name] = model(x)
    rel_close(logits["ext"], logits["torch"])


def test_model_training_step_matches_between_backends(ext):
    """Input gradient with create_graph then a penalty on it: the robust-training pattern."""
    grads = {}
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(10)).float()
    y = torch.tensor([0, 1, 0, 1])
    for name in ("ext", "torch"):
        model = make_model(seed=1).train()
        with backend(name):
            xi = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xi), y)
            (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
            (loss + gx.abs().mean()).backward()
        grads[name] = model.units[0].conv.weight.grad
    rel_close(grads["ext"], grads["torch"], rel=1e-4)


def test_sweep_matches_between_backends(ext):
    from recapfast.attacks.single_step import sweep

    model = make_model(seed=2)
    x, y = random_batch(16, 32, seed=11)
    results = {}
    for name in ("ext", "torch"):
        with backend(name):
            results[name] = sweep(model, x, y, eps=[1, 2, 3, 4, 5], attacks=("fgsm", "llcm"),
                                          return_images=True)
    ext_res, ref_res = results["ext"], results["torch"]
    assert torch.equal(ext_res.clean_predictions, ref_res.clean_predictions)
    for attack in ("fgsm", "llcm"):
        assert torch.equal(ext_res.predictions[attack], ref_res.predictions[attack]), attack
        a, b = ext_res.images[attack], ref_res.images[attack]
        assert a.dtype == torch.uint8 and a.shape == b.shape
        assert (a == b).float().mean().item() >= 0.9999, attack


# ------------------------------------------------------------------------------------ loading, fallback

@pytest.fixture
def fresh_loader(tmp_path, monkeypatch):
    """A loader that has not tried anything yet, with its own build cache; the real state comes back after."""
    monkeypatch.setattr(_build, "STATE", _build.BuildState())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    previous = ops._requested
    yield tmp_path
    ops.set_backend(previous)


@pytest.fixture
def broken_sources(fresh_loader, monkeypatch):
    src = fresh_loader / "csrc"
    (src / "cpu").mkdir(parents=True)
    (src / "recapfast.cpp").write_text('#error "recapfast-test: deliberately broken source"\n')
    monkeypatch.setenv("RECAPFAST_CSRC_DIR", str(src))
    return src


def recapfast_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "recapfast" in ln]


def test_build_failure_falls_back_with_one_line_under_auto(broken_sources, capfd):
    ops.set_backend("auto")
    assert ops.active_backend() == "torch"
    assert ops.active_backend() == "torch"
    x, grad = perturb_inputs((2, 3, 4, 4), torch.uint8, "cpu")
    assert torch.equal(ops.perturb(x, grad, [1.0], [1.0]), ops.perturb_reference(x, grad, [1.0], [1.0]))
    x, w, b = laplace_inputs((1, 3, 4, 4), torch.float32, "cpu")
    assert torch.equal(ops.laplace_conv(x, w, b), ops.laplace_conv_reference(x, w, b))
    lines = recapfast_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert "compiling" in lines[0] and "failed" in lines[0] and "PyTorch reference" in lines[0]
    assert Path(_build.STATE.log_path).is_file()
    assert "deliberately broken" in Path(_build.STATE.log_path).read_text()


def test_build_failure_raises_with_build_log_under_ext(broken_sources, capfd):
    ops.set_backend("ext")
    with pytest.raises(RuntimeError, match="deliberately broken") as info:
        ops.active_backend()
    assert "build log" in str(info.value)
    with pytest.raises(RuntimeError, match="deliberately broken"):   # and again, without rebuilding
        ops.perturb(*perturb_inputs((1, 3, 2, 2), torch.uint8, "cpu"), [1.0], [1.0])
    assert len(recapfast_lines(capfd.readouterr().err)) == 1


def test_torch_backend_never_builds(fresh_loader):
    ops.set_backend("torch")
    assert ops.active_backend() == "torch"
    x, grad = perturb_inputs((1, 3, 2, 2), torch.uint8, "cpu")
    ops.perturb(x, grad, [1.0], [1.0])
    assert not _build.STATE.attempted and not (fresh_loader / "ext").exists()


def test_invalid_backend_name_is_rejected(monkeypatch):
    with pytest.raises(ValueError):
        ops.set_backend("cuda")
    monkeypatch.setattr(ops, "_requested", None)
    monkeypatch.setenv("RECAPFAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="RECAPFAST_BACKEND"):
        ops.requested_backend()


def test_stale_lock_is_removed(tmp_path):
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    lock = build_dir / "lock"
    lock.touch()
    (build_dir / _build._OWNER_FILE).write_text(f"{_build.socket.gethostname()} {os.getpid()}\n")
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    assert _build.clear_stale_lock(build_dir) is None and lock.exists()      # owner alive: a long build
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (build_dir / _build._OWNER_FILE).write_text(f"{_build.socket.gethostname()} {dead.pid}\n")
    message = _build.clear_stale_lock(build_dir)
    assert message and "stale" in message and not lock.exists()
    lock.touch()
    (build_dir / _build._OWNER_FILE).unlink()
    assert _build.clear_stale_lock(build_dir) is None and lock.exists()      # unknown owner, fresh lock
    os.utime(lock, (old, old))
    assert "min old" in _build.clear_stale_lock(build_dir) and not lock.exists()


def test_build_name_tracks_sources(tmp_path):
    import shutil

    src = tmp_path / "csrc"
    shutil.copytree(_build.source_dir(), src)
    before = _build.build_name(src, with_cuda=False)
    assert before == _build.build_name(src, with_cuda=False)
    with open(src / "cpu" / "perturb.cpp", "a") as fh:
        fh.write("\n// changed\n")
    assert _build.build_name(src, with_cuda=False) != before
    assert _build.build_name(src, with_cuda=True) != _build.build_name(src, with_cuda=False)


def test_import_does_not_build(tmp_path):
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "RECAPFAST_BACKEND": "auto"}
    code = "import recapfast, recapfast.ops, recapfast.models.laplacian; print(recapfast.ops._build.STATE.attempted)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False" and "compiling" not in proc.stderr
    assert not (tmp_path / "ext").exists()


def test_doctor_info_reports_backend(ext):
    with backend("ext"):
        info = ops.doctor_info()
    assert info["active_backend"] == "ext" and "extension" in info["reason"]
    assert info["torch"] == torch.__version__ and "ninja" in info
    with backend("torch"):
        assert ops.doctor_info()["active_backend"] == "torch"


def test_doctor_command(ext):
    from typer.testing import CliRunner

    from recapfast.cli import app

    with backend("auto"):  # restores the backend that --backend changes
        result = CliRunner().invoke(app, ["--backend", "ext", "doctor", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["requested_backend"] == "ext" and info["active_backend"] == "ext"

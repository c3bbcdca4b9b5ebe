"""The extension's first launch, made on purpose right after it loads (``_build.load``).

A library can load and still fail at its first kernel launch: built for another GPU architecture
("no kernel image is available"), a driver too old, a broken toolchain. Found in the middle of a
sweep, that is past the point where ``RECAPFAST_BACKEND=auto`` can fall back. So every op runs once
here on tiny inputs, on the CPU and on every visible GPU the extension was compiled for, and its
result is compared with the PyTorch reference (which also forces any asynchronous CUDA error to
surface now). Any failure raises :class:`SmokeTestFailed` with a one-line reason. Cost: a few ms.
"""
from __future__ import annotations

import contextlib

import torch

from .reference import (adv_metrics_reference, laplace_conv_reference, perturb_reference,
                        relu_pool_backward_reference, relu_pool_reference, stem_pool_backward_reference,
                        stem_pool_reference)


class SmokeTestFailed(RuntimeError):
    """The extension loaded but an op failed or disagreed with its reference on its first call."""


def _ops():
    return torch.ops.recapfast


def _devices(with_cuda: bool) -> list[torch.device]:
    devices = [torch.device("cpu")]
    if with_cuda and torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def _check_perturb(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 5, 7), dtype=torch.uint8, generator=gen, device="cpu")  # 105: vectors + tail
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float32, device="cpu")
    grad.view(-1)[::5] = 0.0
    x, grad = x.to(device), grad.to(device)
    eps, signs = [1.5, 2.0], [1.0, -1.0]
    for quantize in (True, False):
        out = _ops().perturb(x, grad, eps, signs, quantize)
        if not torch.equal(out, perturb_reference(x, grad, eps, signs, quantize)):
            raise SmokeTestFailed(f"perturb on {device} gave wrong results")


def _check_laplace_conv(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(1)
    cpu = {"generator": gen, "dtype": torch.float32, "device": "cpu"}
    x = torch.randint(0, 256, (2, 3, 6, 5), **cpu).to(device)
    w = (torch.randn(2, 3, 3, 3, **cpu) / 10).to(device)
    b = torch.randn(2, **cpu).to(device)
    go = torch.randn(2, 2, 6, 5, **cpu).to(device)
    out = _ops().laplace_conv(x, w, b)
    gx, gw, gb = _ops().laplace_conv_backward(go, x, w, [True, True, True])
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    ref = laplace_conv_reference(xr, wr, br)
    want = torch.autograd.grad(ref, (xr, wr, br), go)
    # Loose tolerance: this catches failed launches and garbage; the tests hold the ops to the references.
    for name, got, exp in (("laplace_conv", out, ref.detach()), ("laplace_conv_backward", gx, want[0]),
                           ("laplace_conv_backward", gw, want[1]), ("laplace_conv_backward", gb, want[2])):
        _close(name, device, got, exp)


def _close(name: str, device: torch.device, got: torch.Tensor, exp: torch.Tensor) -> None:
    scale = max(float(exp.abs().max()), 1.0) if exp.numel() else 1.0
    if got.shape != exp.shape or not torch.allclose(got, exp, rtol=1e-2, atol=1e-2 * scale):
        raise SmokeTestFailed(f"{name} on {device} gave wrong results")


def _check_fused_units(device: torch.device) -> None:
    """relu_pool, stem_pool and adv_metrics (bit-exact relu_pool on the CPU, where the tests hold it to that)."""
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(2, 8, 7, 6, generator=gen).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 8, 4, 3, generator=gen)
    x = torch.randint(0, 256, (2, 3, 12, 11), dtype=torch.uint8, generator=gen)
    w = torch.randn(8, 3, 3, 3, generator=gen) / 10
    b = torch.randn(8, generator=gen)
    gs = torch.randn(4, 8, 6, 6, generator=gen)
    adv = (x.float() + torch.randint(-3, 4, (2, *x.shape), generator=gen)).clamp(0, 255).to(torch.uint8)
    ref_pooled, ref_pre = stem_pool_reference(x, w, b, True)
    want = {"relu_pool": relu_pool_reference(h), "relu_pool_backward": relu_pool_backward_reference(g, h),
            "stem_pool_backward": stem_pool_backward_reference(gs, ref_pre, w)}
    h, g, x, w, b, gs, adv = (t.to(device) for t in (h, g, x, w, b, gs, adv))
    got = {"relu_pool": _ops().relu_pool(h), "relu_pool_backward": _ops().relu_pool_backward(g, h)}
    for name in got:
        if device.type == "cpu" and not torch.equal(got[name], want[name]):
            raise SmokeTestFailed(f"{name} on {device} gave wrong results")
        _close(name, device, got[name].cpu(), want[name])
    pooled, pre = _ops().stem_pool(x, w, b, True)
    _close("stem_pool", device, pooled.cpu(), ref_pooled)
    _close("stem_pool", device, pre.cpu(), ref_pre)
    _close("stem_pool_backward", device, _ops().stem_pool_backward(gs, ref_pre.to(device), w).cpu(),
           want["stem_pool_backward"])
    planes = _ops().adv_metrics(x, adv, True).cpu()                       # [K, B, C, 3]
    metrics = torch.stack([planes[..., 0].mean(-1), planes[..., 1].sum(-1), planes[..., 2].amax(-1)], -1)
    _close("adv_metrics", device, metrics, adv_metrics_reference(x.cpu(), adv.cpu()))


def check(with_cuda: bool) -> None:
    """Run every op once per device; raise SmokeTestFailed saying which op on which device failed and how.

    Independent of the caller's context: the first op call may come from inside no_grad, inference_mode
    or autocast.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for device_type in ("cpu", "cuda") if with_cuda else ("cpu",):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        _check_all(with_cuda)


def _check_all(with_cuda: bool) -> None:
    for device in _devices(with_cuda):
        for op, run in (("perturb", _check_perturb), ("laplace_conv", _check_laplace_conv),
                        ("relu_pool/stem_pool/adv_metrics", _check_fused_units)):
            try:
                run(device)
            except SmokeTestFailed:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a first launch disqualifies the extension
                first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
                raise SmokeTestFailed(f"first launch of {op} on {device} failed: {first}") from exc

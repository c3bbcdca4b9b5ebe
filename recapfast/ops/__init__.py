"""recapfast ops: the public op wrappers and backend choice.

Every op has a pure-PyTorch reference (``reference.py``).  The C++/CUDA extension
(``csrc/``) registers the same ops as ``torch.ops.recapfast.<op>``; this module picks
the backend from ``RECAPFAST_BACKEND`` (auto|ext|torch) or :func:`set_backend`:

- ``auto``: use the extension when it builds/loads, else the reference, saying why once on stderr;
- ``ext``: the extension or a RuntimeError carrying the full build log;
- ``torch``: always the reference; nothing is compiled.

The extension is built lazily, on the first op call (or :func:`active_backend`), never at import.
Build/cache details and environment variables: ``recapfast/ops/_build.py``.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from . import _build
from .reference import (laplace_conv_reference, laplacian, perturb_reference, relu_pool_backward_reference,
                        relu_pool_reference, stem_pool_backward_reference, stem_pool_reference,
                        adv_metrics_reference)

_VALID = ("auto", "ext", "torch")
_requested: str | None = None


def requested_backend() -> str:
    name = (_requested or os.environ.get("RECAPFAST_BACKEND", "auto")).strip().lower()
    if name not in _VALID:
        raise ValueError(f"RECAPFAST_BACKEND must be one of {', '.join(_VALID)}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Choose the op backend for this process: 'auto', 'ext', 'torch' (None: from the environment)."""
    global _requested
    if name is not None and name.strip().lower() not in _VALID:
        raise ValueError(f"backend must be one of {', '.join(_VALID)}, got {name!r}")
    _requested = None if name is None else name.strip().lower()


def _ensure_extension() -> _build.BuildState:
    # One lock for load + register: a second thread waits for the first's outcome (never sees a half-done state).
    with _build.LOCK:
        state = _build.load()
        if state.loaded and not state.registered:
            from . import _register
            _register.register()
            state.registered = True
        return state


def _build_error(state: _build.BuildState) -> RuntimeError:
    where = f"\n(build log: {state.log_path})" if state.log_path else ""
    return RuntimeError(f"RECAPFAST_BACKEND=ext but the recapfast C++ extension is unavailable: {state.error}"
                        f"{where}\n--- build log ---\n{state.log}")


def active_backend() -> str:
    """'ext' or 'torch': the backend the ops dispatch to now (builds the extension on first use)."""
    requested = requested_backend()
    if requested == "torch":
        return "torch"
    state = _ensure_extension()
    if state.loaded:
        return "ext"
    if requested == "ext":
        _build.say("")
        raise _build_error(state)
    with _build.LOCK:
        if not state.fallback_reported:
            state.fallback_reported = True
            where = f" (build log: {state.log_path})" if state.log_path else ""
            _build.say(f"C++ extension unavailable ({state.error}); using the PyTorch reference ops{where}. "
                       "Set RECAPFAST_BACKEND=torch to skip the build, or run `recapfast doctor`.")
    return "torch"


def _ext_serves(x: torch.Tensor) -> bool:
    """Whether the extension has kernels for this tensor's device (CPU always; CUDA when compiled in)."""
    if active_backend() != "ext":
        return False
    if x.device.type == "cpu" or (x.device.type == "cuda" and _build.STATE.with_cuda):
        return True
    if requested_backend() == "ext":
        raise RuntimeError(f"RECAPFAST_BACKEND=ext but the recapfast extension has no kernels for {x.device.type} "
                           "tensors (it was built without CUDA); use RECAPFAST_BACKEND=auto or torch")
    return False


def perturb(x: torch.Tensor, grad: torch.Tensor, eps: Sequence[float], signs: Sequence[float],
            quantize: bool = True) -> torch.Tensor:
    """[len(eps), *x.shape] adversarial batches; see :func:`reference.perturb_reference`.

    One pass over ``x`` (uint8 or float32) and ``grad`` for all eps: out[e] =
    clip(x + signs[e]*eps[e]*sign(grad), 0, 255), uint8 (rounded half to even) when ``quantize``.
    Not differentiable (its inputs are detached).
    """
    if len(eps) != len(signs):
        raise ValueError(f"eps and signs must have the same length, got {len(eps)} and {len(signs)}")
    if (x.dtype in (torch.uint8, torch.float32) and grad.is_floating_point() and grad.shape == x.shape
            and grad.device == x.device and _ext_serves(x)):
        return torch.ops.recapfast.perturb(x.detach(), grad.detach(), [float(e) for e in eps],
                                           [float(s) for s in signs], bool(quantize))
    return perturb_reference(x, grad, eps, signs, quantize)


def laplace_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Fixed per-channel Laplacian then the first 3x3 convolution (differentiable to any order).

    x: [B, C, H, W] uint8/float32/float64; weight [Cout, C, 3, 3]; result float32 (float64 for float64 x).
    """
    if (x.dim() == 4 and x.dtype in (torch.uint8, torch.float32, torch.float64) and weight.dim() == 4
            and tuple(weight.shape[2:]) == (3, 3) and weight.device == x.device and _ext_serves(x)):
        return torch.ops.recapfast.laplace_conv(x, weight, bias)
    return laplace_conv_reference(x, weight, bias)


def relu_pool(h: torch.Tensor) -> torch.Tensor:
    """ReLU then the model's 5x5 / stride 2 / pad 2 average pooling (count_include_pad=False).

    float32 [N, C, H, W]; the result is channels_last. Bit-exact with :func:`reference.relu_pool_reference`.
    Not differentiable (the model's autograd path uses the reference modules; the fast input-gradient
    engine calls :func:`relu_pool_backward` itself).
    """
    if h.dim() == 4 and h.dtype == torch.float32 and h.shape[-1] and h.shape[-2] and _ext_serves(h):
        return torch.ops.recapfast.relu_pool(h)
    return relu_pool_reference(h)


def relu_pool_backward(grad_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Input gradient of :func:`relu_pool` at h for k cotangents stacked over h's batch (see the reference)."""
    if (h.dim() == 4 and grad_out.dim() == 4 and h.dtype == torch.float32 and grad_out.dtype == torch.float32
            and h.shape[-1] and h.shape[-2] and grad_out.device == h.device and _ext_serves(h)):
        return torch.ops.recapfast.relu_pool_backward(grad_out, h)
    return relu_pool_backward_reference(grad_out, h)


def stem_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              keep_pre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's first unit (BatchNorm folded into weight/bias): relu_pool(laplace_conv(x, weight, bias)).

    x uint8/float32 [N, Cin, H, W]; returns (pooled [N, Cout, H2, W2], pre-activation [N, Cout, H, W] or an
    empty tensor unless ``keep_pre``), both channels_last. Equal to the reference up to float rounding.
    """
    if (x.dim() == 4 and x.dtype in (torch.uint8, torch.float32) and x.shape[-1] and x.shape[-2]
            and weight.dtype == torch.float32 and bias is not None and bias.dtype == torch.float32
            and weight.device == x.device and _ext_serves(x)):
        return torch.ops.recapfast.stem_pool(x, weight, bias, bool(keep_pre))
    return stem_pool_reference(x, weight, bias, keep_pre)


def stem_pool_backward(grad_out: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input gradient of :func:`stem_pool` for k cotangents stacked over pre's batch: [k*N, Cin, H, W] float32."""
    if (grad_out.dtype == torch.float32 and pre.dtype == torch.float32 and weight.dtype == torch.float32
            and pre.dim() == 4 and pre.shape[-1] and pre.shape[-2] and grad_out.device == pre.device
            and weight.device == pre.device and _ext_serves(pre)):
        return torch.ops.recapfast.stem_pool_backward(grad_out, pre, weight)
    return stem_pool_backward_reference(grad_out, pre, weight)


def adv_metrics(x: torch.Tensor, adv: torch.Tensor, ssim: bool = True) -> torch.Tensor:
    """(SSIM, sum of squared differences, max |difference|) of every adversarial image: float64 [K, B, 3].

    x [B, C, H, W] and adv [K, B, C, H, W], uint8 or float32 pixels; SSIM as recapfast.metrics.ssim
    (NaN below 11x11 or when ``ssim`` is false). The clean image's local statistics are filtered once
    for all K adversarial versions (see csrc/cpu/adv_metrics.cpp).
    """
    if (x.dim() == 4 and adv.dim() == 5 and x.shape[1] and x.dtype in (torch.uint8, torch.float32)
            and adv.dtype in (torch.uint8, torch.float32) and adv.device == x.device
            and _ext_serves(x)):
        planes = torch.ops.recapfast.adv_metrics(x, adv, bool(ssim))             # [K, B, C, 3]
        return torch.stack([planes[..., 0].mean(-1), planes[..., 1].sum(-1), planes[..., 2].amax(-1)], -1)
    return adv_metrics_reference(x, adv, ssim)


def doctor_info(build: bool = True) -> dict:
    """Everything `recapfast doctor` prints: versions, toolchain, requested/active backend and why.

    With ``build=False`` nothing is compiled; the active backend is then reported as far as known.
    """
    import shutil
    import subprocess

    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available

    def tool_version(cmd: list[str]) -> str | None:
        if shutil.which(cmd[0]) is None:
            return None
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return (lines[-1] if cmd[0].endswith("nvcc") else lines[0]).strip() if lines else None

    cxx = os.environ.get("CXX", "c++")
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else (shutil.which("nvcc") or "nvcc")
    info: dict = {
        **_build.platform_summary(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "compiler": tool_version([cxx.split()[0], "--version"]),
        "ninja": bool(is_ninja_available()),
        "nvcc": tool_version([nvcc, "--version"]),
        "cuda_home": CUDA_HOME,
        "sources": str(_build.source_dir()),
        "cache_dir": str(_build.cache_root()),
        "max_jobs": os.environ.get("MAX_JOBS", "2 (default)"),
    }
    try:
        requested = requested_backend()
    except ValueError as exc:
        info.update(requested_backend=None, active_backend=None, reason=str(exc))
        return info
    info["requested_backend"] = requested
    state = _build.STATE
    if requested == "torch":
        active, reason = "torch", "RECAPFAST_BACKEND=torch: the extension is never built"
    elif not build and not state.attempted:
        active, reason = None, "not determined (build skipped)"
    else:
        try:
            active = active_backend()
        except RuntimeError:
            active = None
        state = _build.STATE
        if state.loaded:
            how = f"compiled now in {state.seconds:.1f}s" if state.compiled_now else "loaded from the build cache"
            reason = f"extension {state.name} {how}"
        else:
            reason = f"extension unavailable: {state.error}"
    info.update(active_backend=active, reason=reason, extension_with_cuda=state.with_cuda if state.loaded else None,
                build_dir=state.build_dir or None, build_log=state.log_path or None, speed=_speed(active, reason, info))
    return info


# The plain-PyTorch backend against the C++ core: 179.8 vs 440.6 images/CPU-s, 64 px FGSM+LLCM sweep at eps 1..5,
# one thread (bench/results/amd-epyc-2c.json, the README's performance table).
SLOW_FACTOR = "about 2.4x"


def _cached_build() -> bool | None:
    """Whether the build cache holds a library for the current sources and toolchain (None: cannot tell)."""
    try:
        src = _build.source_dir()
        name = _build.build_name(src, _build.cuda_wanted())
    except Exception:  # noqa: BLE001 - doctor reports what it can; a broken toolchain shows in its other rows
        return None
    return (_build.cache_root() / name / f"{name}.so").is_file()


def _speed(active: str | None, reason: str, info: dict) -> str:
    """Whether the fast path is on; when the slow backend runs, why and what to do about it."""
    if active == "ext":
        return "fast: the C++ core is active"
    if active != "torch":
        cached = _cached_build()
        if cached is None:
            return "unknown (the backend is not determined yet)"
        if cached:
            return "unknown (--no-build): a build of these sources is cached, so the C++ core should load"
        return f"unknown (--no-build): no cached build; the first use compiles one ({_build.FIRST_BUILD_MEASURED})"
    if info.get("requested_backend") == "torch":
        fix = "unset RECAPFAST_BACKEND (or pass --backend auto)"
    elif not info.get("ninja"):
        fix = "pip install ninja"
    elif not info.get("compiler"):
        fix = "install a C++ compiler (g++) or set CXX"
    else:
        fix = "see the build log" + (f" ({info['build_log']})" if info.get("build_log") else "")
    return (f"SLOW: the plain-PyTorch backend is active, {SLOW_FACTOR} slower than the C++ core (64 px sweep); "
            f"why: {reason}; fix: {fix}")


__all__ = ["perturb", "laplace_conv", "laplacian", "relu_pool", "relu_pool_backward", "stem_pool", "stem_pool_backward", "adv_metrics", "set_backend", "active_backend", "requested_backend",
           "perturb_reference", "laplace_conv_reference", "doctor_info"]

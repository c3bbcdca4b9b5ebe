"""Pure-PyTorch references of every recapfast op.

These are the definitions the C++/CUDA kernels are held to in the tests, and the
fallback used when the extension is not available (``RECAPFAST_BACKEND=torch``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# The fixed Laplacian of Yang et al. (paper eq. 1), applied per RGB channel.
LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))


def laplacian_kernel(channels: int = 3, dtype=torch.float32, device=None) -> torch.Tensor:
    """Depthwise weight [channels, 1, 3, 3] holding the Laplacian for each channel."""
    k = torch.tensor(LAPLACIAN, dtype=dtype, device=device)
    return k.expand(channels, 1, 3, 3).contiguous()


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Laplacian with zero padding 1; uint8 input is promoted to float32.

    On the CPU the depthwise convolution runs channels_last (the result is channels_last too): oneDNN's
    NCHW depthwise kernel was ~20x slower here (45 vs 2 ms for 128 images at 64 px, bench/NOTES.md).
    """
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.device.type == "cpu" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, laplacian_kernel(x.shape[1], x.dtype, x.device), padding=1, groups=x.shape[1])


def laplace_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Laplacian filter followed by a 3x3 stride-1 pad-1 convolution (the model's stem)."""
    lap = laplacian(x)
    return F.conv2d(lap, weight.to(lap.dtype), None if bias is None else bias.to(lap.dtype), padding=1)


def perturb_reference(
    x: torch.Tensor,
    grad: torch.Tensor,
    eps: Sequence[float],
    signs: Sequence[float],
    quantize: bool = True,
) -> torch.Tensor:
    """All adversarial batches of a sweep from one gradient.

    out[e] = clip(x + signs[e] * eps[e] * sign(grad), 0, 255), rounded to the nearest
    integer (half to even) and returned as uint8 when ``quantize``, else float32.
    Shape: [len(eps), *x.shape].  ``signs[e]`` is +1 for FGSM and -1 for LLCM.
    Arithmetic is float32: step_e = float32(signs[e] * eps[e]); x + step_e * sign(g).
    """
    if len(eps) != len(signs):
        raise ValueError(f"eps and signs must have the same length, got {len(eps)} and {len(signs)}")
    xf = x.to(torch.float32)
    direction = torch.sign(grad.to(torch.float32))
    # written in place into one output: no list of batches plus their stacked copy (10000 eps: 0.5 GB less)
    out = torch.empty((len(eps), *x.shape), dtype=torch.uint8 if quantize else torch.float32, device=x.device)
    for i, (e, s) in enumerate(zip(eps, signs)):
        step = torch.tensor(float(s) * float(e), dtype=torch.float32)
        adv = torch.clamp(xf + step * direction, 0.0, 255.0)
        out[i] = torch.round(adv) if quantize else adv
    return out


POOL_KERNEL, POOL_STRIDE, POOL_PAD = 5, 2, 2   # the model's average pooling (count_include_pad=False)


def relu_pool_reference(h: torch.Tensor) -> torch.Tensor:
    """ReLU then the model's 5x5 / stride 2 / pad 2 average pooling without counting the padding."""
    return F.avg_pool2d(F.relu(h), POOL_KERNEL, POOL_STRIDE, POOL_PAD, count_include_pad=False)


def relu_pool_backward_reference(grad_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Input gradient of :func:`relu_pool_reference` at ``h`` for ``grad_out`` stacked k times over h's batch.

    Exactly what autograd computes (average-pool backward, then ReLU's threshold backward), for
    k cotangents at once: grad_out [k*N, C, H2, W2], h [N, C, H, W] -> [k*N, C, H, W].
    """
    n = h.shape[0]
    if (n == 0 and grad_out.shape[0] != 0) or (n and grad_out.shape[0] % n):
        raise ValueError(f"grad_out batch {grad_out.shape[0]} is not a multiple of h batch {n}")
    relu = F.relu(h)
    if n and grad_out.shape[0] != n:
        relu = relu.repeat(grad_out.shape[0] // n, 1, 1, 1)
    grad = torch.ops.aten.avg_pool2d_backward(grad_out, relu, [POOL_KERNEL] * 2, [POOL_STRIDE] * 2,
                                              [POOL_PAD] * 2, False, False, None)
    return torch.ops.aten.threshold_backward(grad, relu, 0)


def stem_pool_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        keep_pre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's first unit with BatchNorm folded into (weight, bias): relu_pool(laplace_conv(x, w, b)).

    Returns (pooled, pre-activation); pre is an empty [0] tensor unless ``keep_pre``.
    """
    pre = laplace_conv_reference(x, weight, bias)
    pooled = relu_pool_reference(pre)
    return pooled, (pre if keep_pre else pre.new_empty(0))


def stem_pool_backward_reference(grad_out: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input gradient of :func:`stem_pool_reference` for grad_out stacked k times over pre's batch."""
    grad_pre = relu_pool_backward_reference(grad_out, pre)
    return laplacian(F.conv_transpose2d(grad_pre, weight.to(grad_pre.dtype), padding=1))


def adv_metrics_reference(x: torch.Tensor, adv: torch.Tensor, ssim: bool = True) -> torch.Tensor:
    """Per image k, b of adv [K, B, C, H, W] against x [B, C, H, W]: (SSIM, sum of squared differences,
    max |difference|) as float64 [K, B, 3], in pixel units.

    SSIM is recapfast.metrics.ssim_map's definition in float32 (NaN below 11x11 or when ``ssim`` is
    false), with the clean image's local mean and variance filtered once for all K adversarial images.
    """
    from ..metrics import SSIM_K1, SSIM_K2, SSIM_WINDOW, _filter, gaussian_window

    k, b = adv.shape[0], x.shape[0]
    out = torch.full((k, b, 3), float("nan"), dtype=torch.float64, device=x.device)
    xd = x.to(torch.float64)
    want_ssim = ssim and x.shape[-1] >= SSIM_WINDOW and x.shape[-2] >= SSIM_WINDOW and x.numel() > 0
    if want_ssim:
        shift, c1, c2 = 127.5, (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
        g = gaussian_window(dtype=torch.float32, device=x.device)
        xs = x.to(torch.float32) - shift
        mu_x = _filter(xs, g)
        var_x = _filter(xs * xs, g) - mu_x * mu_x
    for i in range(k):
        diff = (adv[i].to(torch.float64) - xd).flatten(1)
        out[i, :, 1] = diff.square().sum(1)
        if diff.shape[1]:
            out[i, :, 2] = diff.abs().amax(1)
        if want_ssim:
            a = adv[i].to(torch.float32) - shift
            mu_a = _filter(a, g)
            var_a = _filter(a * a, g) - mu_a * mu_a
            cov = _filter(a * xs, g) - mu_a * mu_x
            pa, px = mu_a + shift, mu_x + shift
            ssim_map = ((2 * pa * px + c1) * (2 * cov + c2)) / ((pa * pa + px * px + c1) * (var_a + var_x + c2))
            out[i, :, 0] = ssim_map.mean(dim=(1, 2, 3)).to(torch.float64)
    return out

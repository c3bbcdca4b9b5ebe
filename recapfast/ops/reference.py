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
    """Per-channel Laplacian with zero padding 1; uint8 input is promoted to float32."""
    if not x.is_floating_point():
        x = x.to(torch.float32)
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
    outs = []
    for e, s in zip(eps, signs):
        step = torch.tensor(float(s) * float(e), dtype=torch.float32)
        adv = torch.clamp(xf + step * direction, 0.0, 255.0)
        outs.append(torch.round(adv).to(torch.uint8) if quantize else adv)
    if not outs:
        return torch.empty((0, *x.shape), dtype=torch.uint8 if quantize else torch.float32, device=x.device)
    return torch.stack(outs)

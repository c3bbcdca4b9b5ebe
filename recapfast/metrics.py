"""Imperceptibility metrics in pixel units: PSNR, SSIM, L-inf and L2 of a perturbation.

SSIM follows Wang, Bovik, Sheikh & Simoncelli (IEEE TIP 2004) exactly as their reference code:
an 11x11 Gaussian window with sigma 1.5 (normalized to sum 1), K1 = 0.01, K2 = 0.03,
L = 255 (data range), local statistics over the 'valid' part of the image only (no padding;
an SxS image gives an (S-10)x(S-10) SSIM map), population (biased) variances; the SSIM of an
image is the mean of its map, and for RGB the mean over the three channels (each channel
computed on its own, as scikit-image does with ``channel_axis``).  Images smaller than
11x11 have no SSIM (NaN).
"""
from __future__ import annotations

import math

import torch

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """The 1-D Gaussian taps (sum 1) whose outer product is the SSIM window."""
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """[n, n - k + 1] matrix whose column j holds the taps at rows j .. j + k - 1 ('valid' correlation)."""
    k = g.numel()
    out = torch.zeros((n, n - k + 1), dtype=g.dtype, device=g.device)
    for t in range(k):
        out.diagonal(-t).copy_(g[t].expand(n - k + 1))
    return out


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of [N, C, H, W] per channel, as two matrix products with banded
    matrices (rows, then columns): many times faster than a depthwise convolution on the CPU."""
    h, w = x.shape[-2:]
    x = x @ _band(w, g)                                   # [N, C, H, W - k + 1]
    return _band(h, g).transpose(0, 1) @ x                # [N, C, H - k + 1, W - k + 1]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0, dtype=torch.float64) -> torch.Tensor:
    """Per-channel SSIM maps [N, C, H-10, W-10] of two [N, C, H, W] batches, computed in ``dtype``.

    The (co)variances are taken on images shifted by -data_range/2 (they are shift invariant) so
    that float32 keeps ~1e-6 accuracy; the means are shifted back for the luminance term.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two [N, C, H, W] batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    shift = data_range / 2
    a = a.to(dtype) - shift
    b = b.to(dtype) - shift
    g = gaussian_window(dtype=dtype, device=a.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    var_a = _filter(a * a, g) - mu_a * mu_a
    var_b = _filter(b * b, g) - mu_b * mu_b
    cov = _filter(a * b, g) - mu_a * mu_b
    mu_a, mu_b = mu_a + shift, mu_b + shift
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return num / den


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0, dtype=torch.float64) -> torch.Tensor:
    """SSIM of each image pair, [N] float64 (mean over the map and the channels); NaN below 11x11.

    Accepts [N, C, H, W] or a single [C, H, W] image (then a 0-d tensor), uint8 or float in [0, 255].
    ``dtype=torch.float32`` is ~1.7x faster and within ~1e-6 of float64 (the evaluator uses it).
    """
    single = a.dim() == 3
    if single:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.shape[-1] < SSIM_WINDOW or a.shape[-2] < SSIM_WINDOW:
        out = torch.full((a.shape[0],), math.nan, dtype=torch.float64, device=a.device)
    else:
        out = ssim_map(a, b, data_range, dtype).mean(dim=(1, 2, 3)).to(torch.float64)
    return out[0] if single else out


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """PSNR in dB of each pair, [N] float64 (inf for identical images)."""
    single = a.dim() == 3
    if single:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    mse = (a.to(torch.float64) - b.to(torch.float64)).square().flatten(1).mean(1)
    out = 10.0 * torch.log10(data_range ** 2 / mse)
    return out[0] if single else out


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Max absolute pixel difference of each pair (pixel units)."""
    return (a.to(torch.float64) - b.to(torch.float64)).abs().flatten(1).amax(1)


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each pair's difference (pixel units)."""
    return (a.to(torch.float64) - b.to(torch.float64)).flatten(1).norm(dim=1)


METRIC_LEVELS = ("full", "fast", "none")


def perturbation_stats(x: torch.Tensor, adv: torch.Tensor, level: str = "full") -> dict[str, torch.Tensor]:
    """L-inf, L2, MSE (float32) and SSIM (float64) of every adversarial image against its clean image, [K, B] each.

    ``x`` [B, C, H, W], ``adv`` [K, B, C, H, W] (uint8 or float32 pixels). ``level``: "full" (all four),
    "fast" (SSIM left NaN), "none" (all NaN: nothing computed). One pass per adversarial image
    (``recapfast.ops.adv_metrics``); the clean image's local statistics are filtered once for all K.
    """
    from recapfast import ops

    if level not in METRIC_LEVELS:
        raise ValueError(f"metrics must be one of {', '.join(METRIC_LEVELS)}, got {level!r}")
    if level == "none" or adv.numel() == 0:
        nan = torch.full(adv.shape[:2], math.nan, dtype=torch.float32, device=x.device)
        return {"linf": nan, "l2": nan.clone(), "mse": nan.clone(), "ssim": nan.double()}
    stats = ops.adv_metrics(x, adv, ssim=level == "full")
    sumsq = stats[..., 1]
    return {"linf": stats[..., 2].float(), "l2": sumsq.sqrt().float(), "mse": (sumsq / x[0].numel()).float(),
            "ssim": stats[..., 0]}


__all__ = ["ssim", "ssim_map", "psnr", "linf", "l2", "gaussian_window", "perturbation_stats", "METRIC_LEVELS", "one_hot"]


def one_hot(y: torch.Tensor, classes: int) -> torch.Tensor:
    """int64 one-hot [B, classes] of labels ``y`` without a host read (``F.one_hot`` reads y's range back to
    check it: a device sync per call); a label outside [0, classes) gives a zero row."""
    return (y.unsqueeze(-1) == torch.arange(classes, device=y.device)).to(torch.long)

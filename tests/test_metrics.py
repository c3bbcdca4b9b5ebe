"""SSIM and PSNR against independent references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from recapfast.metrics import l2, linf, psnr, ssim

# scikit-image 0.26.0: structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
# use_sample_covariance=False, data_range=255) on the pair of fixed_pair() printed this value.
SKIMAGE_SSIM = 0.9122269530086423


def fixed_pair() -> tuple[np.ndarray, np.ndarray]:
    """A deterministic textured RGB image [40, 48, 3] and a darkened, noisy copy (no RNG involved)."""
    i, j, c = np.meshgrid(np.arange(40), np.arange(48), np.arange(3), indexing="ij")
    a = ((i * i * 3 + j * 5 + c * 40 + (i * j) % 17 * 4) % 256).astype(np.uint8)
    b = np.clip(a.astype(int) * 4 // 5 + 20 + ((i * 31 + j * 17 + c * 7) % 7 - 3) * 12, 0, 255).astype(np.uint8)
    return a, b


def scipy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 written with scipy: Gaussian filter (sigma 1.5, radius 5 = 11 taps), valid region."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        f = lambda img: ndimage.gaussian_filter(img, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
        values.append(m.mean())
    return float(np.mean(values))


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)


def test_ssim_matches_reference_values():
    a, b = fixed_pair()
    got = float(ssim(chw(a), chw(b)))
    assert got == pytest.approx(SKIMAGE_SSIM, abs=1e-12)
    assert got == pytest.approx(scipy_ssim(a, b), abs=1e-12)
    assert float(ssim(chw(a), chw(b), dtype=torch.float32)) == pytest.approx(SKIMAGE_SSIM, abs=1e-6)


def test_ssim_of_an_image_with_itself_is_one():
    a, _ = fixed_pair()
    x = torch.from_numpy(np.stack([a, a[::-1].copy()])).permute(0, 3, 1, 2)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-12)
    flat = torch.full((1, 3, 16, 16), 77, dtype=torch.uint8)
    assert float(ssim(flat, flat)[0]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_batch_symmetry_and_small_images():
    a, b = fixed_pair()
    x, y = chw(a).unsqueeze(0), chw(b).unsqueeze(0)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-12)
    assert ssim(torch.cat([x, y]), torch.cat([y, x])).shape == (2,)
    assert math.isnan(float(ssim(x[..., :10, :10], y[..., :10, :10])[0]))
    with pytest.raises(ValueError):
        ssim(x, y[..., :20])


def test_psnr_and_norms():
    a = torch.zeros((2, 3, 8, 8))
    b = a.clone()
    b[0, 0, 0, 0] = 16                           # mse = 256 / 192
    b[1] = 1                                     # mse = 1
    p = psnr(a, b)
    assert p[0].item() == pytest.approx(10 * math.log10(255 ** 2 / (256 / 192)))
    assert p[1].item() == pytest.approx(20 * math.log10(255))
    assert math.isinf(psnr(a, a)[0].item())
    assert linf(a, b).tolist() == [16.0, 1.0]
    assert l2(a, b).tolist() == pytest.approx([16.0, math.sqrt(192)])

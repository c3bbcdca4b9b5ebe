"""The scene of the synthetic recapture generator: a resolution-independent dead-leaves model.

:func:`_draw_scene` draws the description of a scene from a random generator; :func:`_render_scene`
renders its linear radiance at any pixel grid over [0, 1]^2, so a scene renders consistently at
sensor and display resolution.  The model is described in ``recapfast.data.synth`` (Scene); v3
(``recapfast.data.synth3``) reuses it.  Pure numpy float32.
"""
from __future__ import annotations

import math

import numpy as np

_F32 = np.float32


def _fourier_field(rng: np.random.Generator, kmax: int, beta: float) -> np.ndarray:
    """Random band-limited field coefficients c[ky, kx] for ky in [-kmax, kmax], kx in [0, kmax]."""
    ky = np.arange(-kmax, kmax + 1)[:, None]
    kx = np.arange(0, kmax + 1)[None, :]
    rad = np.sqrt(ky ** 2 + kx ** 2)
    amp = np.where(rad > 0, 1.0 / np.maximum(rad, 1.0) ** beta, 0.0)
    amp[rad > kmax] = 0.0
    c = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    return c


def _eval_field(coef: np.ndarray, n: int) -> np.ndarray:
    """Evaluate a field (from :func:`_fourier_field`) on an n x n grid over [0, 1)^2, unit std."""
    kmax = coef.shape[1] - 1
    k = min(kmax, n // 2 - 1)
    spec = np.zeros((n, n // 2 + 1), dtype=np.complex128)
    spec[0:k + 1, 0:k + 1] = coef[kmax:kmax + k + 1, 0:k + 1]
    if k > 0:
        spec[n - k:n, 0:k + 1] = coef[kmax - k:kmax, 0:k + 1]
    field = np.fft.irfft2(spec, s=(n, n)) * (n * n)
    # Normalise by the coefficients (not the samples) so every resolution sees the same function.
    sd = math.sqrt(2.0 * float(np.sum(np.abs(coef[kmax - k:kmax + k + 1, 0:k + 1]) ** 2))) + 1e-12
    return (field / sd).astype(_F32)


def _draw_scene(rng: np.random.Generator, size: int) -> dict:
    """Resolution-independent description of a dead-leaves scene."""
    n_big = int(rng.integers(6, 13))
    n = n_big + int(rng.integers(50, 101))
    rmin, rmax, alpha = 0.02, 0.45, 3.0
    u = rng.random(n)
    a1 = 1.0 - alpha
    r = (rmin ** a1 - u * (rmin ** a1 - rmax ** a1)) ** (1.0 / a1)
    # The back-most leaves are large so that the occlusion stack covers the frame.
    r[:n_big] = rng.uniform(0.2, 0.6, n_big)
    shape = rng.choice(3, size=n, p=[0.55, 0.25, 0.20])
    aspect = np.where(shape == 0, 1.0, np.exp(rng.uniform(-0.8, 0.8, n)))
    light = np.exp(rng.uniform(math.log(0.03), math.log(0.9), n))
    hue = rng.standard_normal((n, 3))
    hue -= hue.mean(axis=1, keepdims=True)
    hue /= np.linalg.norm(hue, axis=1, keepdims=True) + 1e-9
    chroma = rng.uniform(0.0, 1.0, n) ** 1.5 * 1.1
    color = np.clip(light[:, None] * (1.0 + chroma[:, None] * hue), 0.005, 1.0)
    tex = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])  # 0 flat, 1 1/f texture, 2 grating
    kmax = max(2, size // 2 - 1)
    return {
        "n": n,
        "cx": rng.uniform(-0.1, 1.1, n), "cy": rng.uniform(-0.1, 1.1, n), "r": r,
        "shape": shape, "aspect": aspect, "angle": rng.uniform(0, math.pi, n),
        "color": color.astype(_F32), "tex": tex, "tex_amp": rng.uniform(0.1, 0.7, n),
        "shade": rng.normal(0.0, 0.8, (n, 2)),
        "grating_period": r * rng.uniform(0.02, 0.25, n), "grating_angle": rng.uniform(0, math.pi, n),
        "grating_amp": rng.uniform(0.2, 0.8, n),
        "bg": np.clip(rng.uniform(0.05, 0.6, 3), 0.02, 1.0), "bg_grad": rng.normal(0, 0.5, 2),
        "texture": _fourier_field(rng, kmax, 1.0),
        "illum": _fourier_field(rng, 4, 2.0), "illum_amp": rng.uniform(0.0, 0.6),
        "illum_grad": rng.normal(0, 0.3, 2), "vignette": rng.uniform(0.0, 0.4),
        "illuminant": np.exp(np.array([rng.uniform(-0.25, 0.25), 0.0, rng.uniform(-0.25, 0.25)])),
    }


def _render_scene(sc: dict, n: int) -> np.ndarray:
    """Linear radiance of a scene on an n x n grid covering [0, 1]^2: (n, n, 3) float32."""
    px = 1.0 / n
    coords = ((np.arange(n, dtype=_F32) + 0.5) * px).astype(_F32)
    xs, ys = coords[None, :], coords[:, None]
    tex = _eval_field(sc["texture"], n)
    img = np.empty((n, n, 3), _F32)
    gx, gy = sc["bg_grad"]
    base = (1.0 + 0.5 * (gx * (xs - 0.5) + gy * (ys - 0.5))).clip(0.2, 2.0)
    img[:] = base[..., None] * sc["bg"].astype(_F32)
    for i in range(sc["n"]):
        cx, cy, r, asp = sc["cx"][i], sc["cy"][i], sc["r"][i], sc["aspect"][i]
        ra, rb = r * math.sqrt(asp), r / math.sqrt(asp)
        ext = max(ra, rb) * (1.42 if sc["shape"][i] == 2 else 1.0) + 2 * px
        j0, j1 = max(0, int((cx - ext) * n)), min(n, int((cx + ext) * n) + 1)
        i0, i1 = max(0, int((cy - ext) * n)), min(n, int((cy + ext) * n) + 1)
        if j0 >= j1 or i0 >= i1:
            continue
        dx, dy = xs[:, j0:j1] - _F32(cx), ys[i0:i1, :] - _F32(cy)
        ca, sa = _F32(math.cos(sc["angle"][i])), _F32(math.sin(sc["angle"][i]))
        u = dx * ca + dy * sa
        v = dy * ca - dx * sa
        if sc["shape"][i] == 2:
            sd = np.maximum(np.abs(u) - _F32(ra), np.abs(v) - _F32(rb))
        else:
            sd = (np.sqrt((u / _F32(ra)) ** 2 + (v / _F32(rb)) ** 2) - 1.0) * _F32(min(ra, rb))
        a = np.clip(0.5 - sd * _F32(n), 0.0, 1.0)
        if not a.any():
            continue
        sx, sy = sc["shade"][i]
        shade = 1.0 + _F32(sx) * u / _F32(r) * 0.3 + _F32(sy) * v / _F32(r) * 0.3
        t = sc["tex"][i]
        if t == 1:
            shade = shade * (1.0 + _F32(sc["tex_amp"][i] * 0.5) * tex[i0:i1, j0:j1])
        elif t == 2:
            ga = sc["grating_angle"][i]
            period = sc["grating_period"][i]
            ph = (u * _F32(math.cos(ga)) + v * _F32(math.sin(ga))) * _F32(2 * math.pi / period)
            # Pixel-aperture prefilter: the grating is band-limited at every resolution.
            amp = sc["grating_amp"][i] * math.exp(-2.0 * (math.pi * 0.5 * px / period) ** 2)
            shade = shade * (1.0 + _F32(amp) * np.sin(ph))
        col = np.clip(shade, 0.05, 3.0)[..., None] * sc["color"][i]
        blk = img[i0:i1, j0:j1]
        blk += a[..., None] * (col - blk)
    illum = np.exp(_F32(sc["illum_amp"]) * _eval_field(sc["illum"], n))
    gx, gy = sc["illum_grad"]
    illum *= (1.0 + gx * (xs - 0.5) + gy * (ys - 0.5)).clip(0.3, 2.0)
    rr = (xs - 0.5) ** 2 + (ys - 0.5) ** 2
    illum *= 1.0 - _F32(sc["vignette"]) * rr * 2.0
    return img * illum[..., None] * sc["illuminant"].astype(_F32)


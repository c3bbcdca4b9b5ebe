"""Synthetic recapture data: a physically motivated simulator of single and double capture.

No real recapture data set can be shipped, so recapfast generates one.  The two classes differ
only by the *physical traces of recapture*; everything a trivial classifier could use (global
brightness, contrast, per-channel histograms, exposure, tone curve, noise level, JPEG) is drawn
from the same distributions for both classes, and the recaptured sensor irradiance is histogram
matched to the irradiance the plain capture of the same scene would have had.

All arithmetic is numpy float32 (no torch, no threads), so an image is a pure function of its
random generator: image ``i`` of class ``c`` uses ``numpy.random.default_rng([seed, c, i])``
(class 0 = original, 1 = recaptured) and any subset can be regenerated in any order, in parallel.

Physical model
==============

Scene (linear radiance, resolution independent; rendered at any pixel grid over [0, 1]^2)
    * Dead-leaves occlusion model: 6..12 large background leaves (radius U(0.2, 0.6) image widths)
      then 50..100 leaves with power-law radii p(r) ~ r^-3 on [0.02, 0.45] (scale invariance of
      natural images), painted back to front.
      Shapes: disks 55 %, rotated ellipses 25 % (aspect e^U(-0.8, 0.8)), rotated rectangles 20 %
      (straight edges).  Edges are anti-aliased from the analytic signed distance.
    * Leaf reflectance: log-uniform lightness in [0.03, 0.9] times a random chroma of strength
      U(0, 0.6); per-leaf linear shading gradient; 40 % of leaves modulated by a 1/f texture
      (amplitude U(0.1, 0.7)), 20 % by a sinusoidal grating (period 2..25 % of the leaf radius,
      attenuated by a half-pixel Gaussian prefilter so it is band limited at any resolution).
    * Background: smooth gradient.  Illumination: a low-frequency multiplicative field
      (exp of 1/f^2 noise, strength U(0, 0.6)), a linear gradient and vignetting U(0, 0.4),
      illuminant colour with red/blue gains e^U(-0.25, 0.25).
    * Textures are band-limited Fourier series whose coefficients are drawn once per scene, so the
      same scene renders consistently at sensor and display resolution.

Camera (``_draw_camera``; the SAME distributions for originals, the first capture of a recapture
and the recapturing camera)
    * optics: Gaussian lens blur sigma U(0.25, 0.7) sensor px; pixel aperture (fill factor) U(0.3, 0.8);
    * auto exposure: mean irradiance maps to 18 % x e^U(ln 0.6, ln 1.6) of full well (bright parts clip);
    * Bayer CFA (random phase of RGGB), shot noise with full well e^U(ln 1000, ln 20000) electrons,
      Gaussian read noise e^U(ln 0.0005, ln 0.005) of full scale, clip to [0, 1];
    * bilinear demosaic (normalised convolution, measured samples kept);
    * grey-world white balance with a per-channel error e^N(0, 0.04);
    * tone curve x^(1/g), g ~ U(1.8, 2.6), blended with an S-curve by U(0, 0.5);
    * 8-bit quantisation; JPEG (quality U{80..95}, 4:2:0) with probability ``jpeg_prob``, as an
      in-memory round trip.

Original: scene at sensor resolution -> camera.

Recaptured:
    1. a first capture of an independent scene, rendered at display resolution
       D = ceil(size * s * (|cos t| + |sin t|)) + 4, through the camera above (8-bit, maybe JPEG);
    2. a display: gamma U(2.0, 2.6), black level U(0.002, 0.03), white-point gains U(0.85, 1.1);
       each display pixel is three vertical RGB (or BGR, 50 %) sub-pixel stripes separated by a
       black matrix (horizontal gap U(0.04, 0.14), vertical gap U(0.05, 0.3) of the pixel pitch);
    3. the recapturing camera, focused on the display plane, sees it at s = U(1.2, 3.0) display px
       per sensor px, rotated by t = U(-8, 8) degrees, shifted by a random sub-pixel offset.  Its
       point spread on the screen, sigma U(0.03, 0.12) display px, attenuates the sub-pixel grid
       analytically (Fourier series of the stripe/black-matrix masks, 5 harmonics); the pixel
       aperture (fill factor above) is integrated with 3x3 samples.  Aliasing of the grid gives moire;
       the sub-pixel stripes produce colour fringes; content is seen through two blurs, two noise
       fields, two tone curves, two demosaics and maybe two JPEGs;
    4. the irradiance is histogram matched per channel (rank based, exact, random tie breaking) to
       the irradiance a plain capture of the same scene would have (rendered, blurred, exposed,
       then discarded), then goes through the recapturing camera's sensor noise, demosaic, white
       balance, tone curve, quantisation and JPEG stages.

Saved originals and saved recaptures use independent scenes (no pairs across classes), so
train/test splits cannot leak scenes.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from recapfast.io import atomic

GENERATOR_VERSION = "recapfast.synth/2"
CLASS_DIRS = ("original", "recaptured")

_F32 = np.float32


# --------------------------------------------------------------------------------------------
# small numpy image helpers (H, W, C float32)
# --------------------------------------------------------------------------------------------

def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return (k / k.sum()).astype(_F32)


def _sep_filter(img: np.ndarray, k: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Separable filter along axes 0 and 1 (reflect or zero padding)."""
    r = len(k) // 2
    pad = [(r, r), (0, 0)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad, mode=mode) if mode == "reflect" else np.pad(img, pad)
    h = img.shape[0]
    out = k[0] * p[0:h]
    for t in range(1, len(k)):
        out = out + k[t] * p[t:t + h]
    pad = [(0, 0), (r, r)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(out, pad, mode=mode) if mode == "reflect" else np.pad(out, pad)
    w = img.shape[1]
    out = k[0] * p[:, 0:w]
    for t in range(1, len(k)):
        out = out + k[t] * p[:, t:t + w]
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.05:
        return img
    return _sep_filter(img, _gauss_kernel(sigma))


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _f(x) -> float:
    return round(float(x), 5)


# --------------------------------------------------------------------------------------------
# scene
# --------------------------------------------------------------------------------------------

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


def _scene_params(sc: dict) -> dict:
    return {"leaves": sc["n"], "illum_amp": _f(sc["illum_amp"]), "vignette": _f(sc["vignette"]),
            "illuminant_rb": [_f(sc["illuminant"][0]), _f(sc["illuminant"][2])]}


# --------------------------------------------------------------------------------------------
# camera
# --------------------------------------------------------------------------------------------

def _draw_camera(rng: np.random.Generator, jpeg_prob: float) -> dict:
    """Camera parameters; the same distribution for every capture in both classes."""
    use_jpeg = bool(rng.random() < jpeg_prob)
    return {
        "lens_sigma": _f(rng.uniform(0.25, 0.7)),
        "fill_factor": _f(rng.uniform(0.3, 0.8)),
        "exposure": _f(math.exp(rng.uniform(math.log(0.6), math.log(1.6)))),
        "cfa_phase": [int(rng.integers(0, 2)), int(rng.integers(0, 2))],
        "full_well": _f(math.exp(rng.uniform(math.log(1000.0), math.log(20000.0)))),
        "read_noise": _f(math.exp(rng.uniform(math.log(0.0005), math.log(0.005)))),
        "wb_error": [_f(x) for x in np.exp(rng.normal(0.0, 0.04, 3))],
        "gamma": _f(rng.uniform(1.8, 2.6)),
        "s_curve": _f(rng.uniform(0.0, 0.5)),
        "jpeg_quality": int(rng.integers(80, 96)) if use_jpeg else None,
    }


def _expose(irr: np.ndarray, cam: dict) -> np.ndarray:
    """Auto exposure: mean luminance maps to cam['exposure'] x 18 % of full well."""
    lum = float(irr.mean()) + 1e-6
    return irr * _F32(0.18 * cam["exposure"] / lum)


_K121 = np.array([0.25, 0.5, 0.25], dtype=_F32)


def _sensor_and_finish(irr: np.ndarray, cam: dict, rng: np.random.Generator) -> np.ndarray:
    """Exposed irradiance (H, W, 3) -> CFA, noise, demosaic, WB, tone curve, 8-bit, JPEG."""
    h, w, _ = irr.shape
    py, px = cam["cfa_phase"]
    yy = (np.arange(h)[:, None] + py) % 2
    xx = (np.arange(w)[None, :] + px) % 2
    chan = np.where((yy == 0) & (xx == 0), 0, np.where((yy == 1) & (xx == 1), 2, 1))
    masks = np.stack([chan == c for c in range(3)], axis=2).astype(_F32)
    mosaic = np.take_along_axis(irr, chan[..., None], axis=2)[..., 0]
    var = np.clip(mosaic, 0.0, None) / _F32(cam["full_well"]) + _F32(cam["read_noise"] ** 2)
    mosaic = mosaic + np.sqrt(var) * rng.standard_normal((h, w), dtype=_F32)
    mosaic = np.clip(mosaic, 0.0, 1.0)
    num = _sep_filter(masks * mosaic[..., None], _K121, mode="zero")
    den = _sep_filter(masks, _K121, mode="zero")
    rgb = np.where(masks > 0, mosaic[..., None], num / np.maximum(den, 1e-6))
    means = rgb.reshape(-1, 3).mean(axis=0) + 1e-6
    gains = (means.mean() / means) * np.array(cam["wb_error"], dtype=np.float64)
    rgb = np.clip(rgb * gains.astype(_F32), 0.0, 1.0)
    y = rgb ** _F32(1.0 / cam["gamma"])
    c = _F32(cam["s_curve"])
    y = (1 - c) * y + c * (y * y * (3.0 - 2.0 * y))
    out = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    if cam["jpeg_quality"] is not None:
        out = _jpeg_roundtrip(out, cam["jpeg_quality"])
    return out


def _plain_irradiance(sc: dict, n_full: int, size: int, cam: dict) -> np.ndarray:
    """Exposed sensor irradiance of a plain capture: the central size x size crop of the scene
    rendered over n_full sensor px (n_full = size for a whole-scene capture)."""
    img = _render_scene(sc, n_full)
    irr = _blur(img, cam["lens_sigma"])
    o = (n_full - size) // 2
    return _expose(irr[o:o + size, o:o + size], cam)


def _capture(sc: dict, n: int, cam: dict, rng: np.random.Generator) -> np.ndarray:
    return _sensor_and_finish(_plain_irradiance(sc, n, n, cam), cam, rng)


# --------------------------------------------------------------------------------------------
# display and recapture geometry
# --------------------------------------------------------------------------------------------

_HARMONICS = 5


def _stripe_mask(frac: np.ndarray, center: float, width: float, sigma: float) -> np.ndarray:
    """Periodic box (period 1, given centre and width) convolved with a Gaussian of std sigma,
    evaluated at ``frac`` via its Fourier series (Chebyshev recurrence for cos(n theta))."""
    c1 = np.cos(_F32(2 * math.pi) * (frac - _F32(center)))
    out = np.full(frac.shape, _F32(width), dtype=_F32)
    t_prev, t_cur = np.ones_like(c1), c1
    for k in range(1, _HARMONICS + 1):
        coef = 2.0 / (math.pi * k) * math.sin(math.pi * k * width) * math.exp(-2 * (math.pi * k * sigma) ** 2)
        out += _F32(coef) * t_cur
        t_prev, t_cur = t_cur, 2 * c1 * t_cur - t_prev
    return np.clip(out, 0.0, None)


def _draw_display(rng: np.random.Generator) -> dict:
    return {
        "gamma": _f(rng.uniform(2.0, 2.6)),
        "black": _f(rng.uniform(0.002, 0.03)),
        "white_gains": [_f(x) for x in rng.uniform(0.85, 1.1, 3)],
        "bgr": bool(rng.random() < 0.5),
        "gap_h": _f(rng.uniform(0.04, 0.14)),
        "gap_v": _f(rng.uniform(0.05, 0.3)),
        "focus_sigma": _f(rng.uniform(0.03, 0.12)),
    }


def _photograph_display(shown: np.ndarray, disp: dict, geo: dict, cam: dict, size: int) -> np.ndarray:
    """Irradiance on the recapturing sensor (size, size, 3) looking at ``shown`` on a display."""
    d = shown.shape[0]
    lin = (shown.astype(_F32) / 255.0) ** _F32(disp["gamma"])
    lin = (_F32(disp["black"]) + (1.0 - _F32(disp["black"])) * lin) * np.array(disp["white_gains"], _F32)
    s, th = geo["scale"], math.radians(geo["rotation_deg"])
    ss = 3  # aperture samples per axis
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * cam["fill_factor"]
    base = np.arange(size) + 0.5 - size / 2.0
    sy = (base[:, None] + off[None, :]).reshape(-1).astype(np.float64)  # (size*ss,)
    sx = sy
    ct, st = math.cos(th), math.sin(th)
    u = d / 2.0 + geo["shift"][0] + s * (ct * sx[None, :] - st * sy[:, None])
    v = d / 2.0 + geo["shift"][1] + s * (st * sx[None, :] + ct * sy[:, None])
    iu = np.clip(np.floor(u), 0, d - 1).astype(np.intp)
    iv = np.clip(np.floor(v), 0, d - 1).astype(np.intp)
    fu = (u - np.floor(u)).astype(_F32)
    fv = (v - np.floor(v)).astype(_F32)
    sig = disp["focus_sigma"]
    width = 1.0 / 3.0 - disp["gap_h"]
    mv = _stripe_mask(fv, 0.5, 1.0 - disp["gap_v"], sig)
    pix = lin[iv, iu]  # (size*ss, size*ss, 3)
    out = np.empty_like(pix)
    for c in range(3):
        slot = (2 - c) if disp["bgr"] else c
        out[..., c] = pix[..., c] * _stripe_mask(fu, (slot + 0.5) / 3.0, width, sig) * mv
    out *= _F32(3.0 / (1.0 - disp["gap_v"]))
    return out.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))


def _match_histograms(src: np.ndarray, ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel exact rank matching of src to ref (same shape); ties broken at random."""
    h, w, c = src.shape
    out = np.empty_like(ref)
    for k in range(c):
        s = src[..., k].reshape(-1).astype(np.float64)
        s = s + rng.random(s.size) * (1e-9 * (float(np.abs(s).max()) + 1e-9))
        order = np.argsort(s, kind="stable")
        flat = np.empty(s.size, dtype=ref.dtype)
        flat[order] = np.sort(ref[..., k].reshape(-1))
        out[..., k] = flat.reshape(h, w)
    return out


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def render(size: int, recaptured: bool, rng: np.random.Generator, *, jpeg_prob: float = 0.3
           ) -> tuple[np.ndarray, dict]:
    """One image: an (size, size, 3) uint8 RGB array and the dict of parameters drawn (JSON-able).

    ``recaptured=False`` simulates a single camera capture of a procedural scene; ``True`` a
    photograph of that capture shown on a display (see the module docstring for the model).
    The result depends only on ``size``, ``recaptured``, ``jpeg_prob`` and the state of ``rng``.
    """
    size = int(size)
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if not 0.0 <= jpeg_prob <= 1.0:
        raise ValueError(f"jpeg_prob must be in [0, 1], got {jpeg_prob}")
    if not recaptured:
        sc = _draw_scene(rng, size)
        cam = _draw_camera(rng, jpeg_prob)
        img = _capture(sc, size, cam, rng)
        return img, {"class": "original", "size": size, "scene": _scene_params(sc), "camera": cam}

    sc = _draw_scene(rng, size)
    cam1 = _draw_camera(rng, jpeg_prob)
    cam2 = _draw_camera(rng, jpeg_prob)
    disp = _draw_display(rng)
    s = float(rng.uniform(1.2, 3.0))
    rot = float(rng.uniform(-8.0, 8.0))
    geo = {"scale": _f(s), "rotation_deg": _f(rot),
           "shift": [_f(x) for x in rng.uniform(-0.5, 0.5, 2)]}
    th = math.radians(geo["rotation_deg"])
    span = geo["scale"] * size * (abs(math.cos(th)) + abs(math.sin(th)))
    d = int(math.ceil(span)) + 4
    geo["display_px"] = d
    shown = _capture(sc, d, cam1, rng)
    irr = _photograph_display(shown, disp, geo, cam2, size)
    # What a plain capture of the same scene (same field of view) would have received.
    n_full = max(size, int(round(d / geo["scale"])))
    ref = _plain_irradiance(sc, n_full, size, cam2)
    irr = _match_histograms(irr, ref, rng)
    img = _sensor_and_finish(irr, cam2, rng)
    return img, {"class": "recaptured", "size": size, "scene": _scene_params(sc), "camera1": cam1,
                 "display": disp, "geometry": geo, "camera2": cam2}


def _rng_for(seed: int, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(label), int(index)])


def render_indexed(size: int, label: int, index: int, seed: int, jpeg_prob: float = 0.3
                   ) -> tuple[np.ndarray, dict]:
    """Image ``index`` of class ``label`` (0 original, 1 recaptured) of the data set ``seed``."""
    return render(size, bool(label), _rng_for(seed, label, index), jpeg_prob=jpeg_prob)


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _work(job: tuple) -> tuple:
    out_dir, size, label, index, seed, jpeg_prob = job
    img, params = render_indexed(size, label, index, seed, jpeg_prob)
    data = _png_bytes(img)
    rel = f"{CLASS_DIRS[label]}/{index:06d}.png"
    atomic.write_file(os.path.join(out_dir, rel), data, durable=False)   # regenerable: atomic, not fsynced
    return label, index, rel, hashlib.sha256(data).hexdigest(), params


def synthesize(out_dir, size: int = 64, count: int = 1000, seed: int = 0, workers: int | None = None,
               jpeg_prob: float = 0.3, progress: Callable[[int], None] | None = None) -> dict:
    """Write ``count`` originals and ``count`` recaptures (PNG) and ``manifest.json`` to ``out_dir``.

    Layout: ``out_dir/original/000000.png ...``, ``out_dir/recaptured/000000.png ...``.  Image i
    of class c is a pure function of (seed, c, i, size, jpeg_prob).  ``workers`` processes render
    in parallel (default min(2, cpu count)).  ``progress(n_done)`` is called as images finish.
    Raises FileExistsError if a class folder already holds files.  Returns the manifest dict.
    """
    size, count, seed = int(size), int(count), int(seed)
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= jpeg_prob <= 1.0:
        raise ValueError(f"jpeg_prob must be in [0, 1], got {jpeg_prob}")
    out = Path(out_dir)
    for name in CLASS_DIRS:
        sub = out / name
        if sub.exists() and any(sub.iterdir()):
            raise FileExistsError(f"{sub} is not empty; synthesize refuses to write into it "
                                  f"(choose a new output folder or empty it first)")
    if (out / "manifest.json").exists():
        raise FileExistsError(f"{out / 'manifest.json'} already exists; choose a new output folder")
    for name in CLASS_DIRS:
        (out / name).mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, int(workers))
    jobs = [(str(out), size, label, i, seed, float(jpeg_prob)) for i in range(count) for label in (0, 1)]
    files: list[list] = [[None] * count, [None] * count]
    done = 0

    def collect(res):
        nonlocal done
        label, index, rel, digest, params = res
        files[label][index] = {"file": rel, "sha256": digest, "params": params}
        done += 1
        if progress is not None:
            progress(done)

    if workers == 1 or len(jobs) < 16:
        for job in jobs:
            collect(_work(job))
    else:
        import multiprocessing as mp
        with mp.get_context().Pool(workers) as pool:
            for res in pool.imap_unordered(_work, jobs, chunksize=max(1, min(32, len(jobs) // (8 * workers)))):
                collect(res)
    manifest = {
        "generator": GENERATOR_VERSION,
        "size": size, "count": count, "seed": seed, "jpeg_prob": float(jpeg_prob),
        "classes": {name: label for label, name in enumerate(CLASS_DIRS)},
        "rng": "numpy.random.default_rng([seed, label, index])",
        "files": files[0] + files[1],
    }
    atomic.write_json(out / "manifest.json", manifest, indent=1, allow_nan=True)
    return manifest


__all__ = ["render", "synthesize", "render_indexed", "GENERATOR_VERSION", "CLASS_DIRS"]

"""Camera and display simulation of the synthetic recapture generator (numpy float32, no threads).

The camera pipeline (lens blur, auto exposure, Bayer CFA, shot and read noise, demosaic, white
balance, tone curve, 8-bit, JPEG) and the display a recapture photographs (gamma, sub-pixel stripes
and black matrix seen through the recapturing camera's focus and pixel aperture), plus the small
separable-filter helpers they use.  The model is described in ``recapfast.data.synth`` (Camera,
Recaptured); v3 (``recapfast.data.synth3``) reuses the camera.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

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


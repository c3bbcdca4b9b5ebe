"""Generator 3.1's direct path (``recapfast.data.synth3``): a source's own pixels as the original, and what a
recapture shows.  The helpers here keep the two classes alike in everything but the display and the second camera:
the source spread (sharpness, noise), storage (JPEG, greyscale) and the recapture's per-channel rank matching."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from recapfast.data.synth_optics import (_blur, _expose, _f, _jpeg_roundtrip, _match_histograms,
                                        _sensor_and_finish)

_F32 = np.float32


def _encode(lin: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(lin ** _F32(1 / 2.2) * 255.0), 0, 255).astype(np.uint8)


def _is_grey(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def _store(img: np.ndarray, quality: int | None) -> np.ndarray:
    """The camera's storage: JPEG at ``quality`` (None: lossless); a greyscale image is stored greyscale."""
    if quality is None:
        return img
    return _jpeg_grey(img, quality) if _is_grey(img) else _jpeg_roundtrip(img, quality)


def _jpeg_grey(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img[..., 0]), "L").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.repeat(np.asarray(im, dtype=np.uint8)[..., None], 3, 2)


def _source_variation(img: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """Photographs differ in sharpness and noise; an original and the picture a recapture shows carry the same
    spread, so neither is a class cue: with probability 0.5 a Gaussian blur of sigma U(0.3, 1.2) px, with
    probability 0.5 Gaussian noise of sigma U(0.5, 3) grey levels.  Drawn from ``seed`` alone."""
    rng = np.random.default_rng([int(seed), 31])
    blur = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.5 else 0.0
    noise = float(rng.uniform(0.5, 3.0)) if rng.random() < 0.5 else 0.0
    x = img.astype(_F32)
    if blur > 0:
        x = _blur(x, blur)
    if noise > 0:
        x = x + _F32(noise) * rng.standard_normal(x.shape, dtype=_F32)
        if _is_grey(img):
            x = np.repeat(x[..., :1], 3, 2)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out, {"source_blur_px": _f(blur), "source_noise": _f(noise)}


def _recapture_photo(size: int, p: dict, rng: np.random.Generator):
    """A recapture of the photograph itself: the photo's pixels over the direct original's region are shown
    on the display and photographed; the result is rank matched per channel to the direct crop of the same
    region (so global statistics equal an original's) before the recapturing camera's JPEG stage."""
    from recapfast.data.synth3 import _recapture_irradiance

    ref, scene = p["direct"](p["noise_seed"])
    shown = np.asarray(Image.fromarray(ref, "RGB").resize((p["d"], p["d"]), Image.Resampling.BICUBIC))
    irr = _recapture_irradiance(shown, p["display"], p["geo"], p["optics"], size)
    irr = _expose(irr, p["cam"])
    cam = dict(p["cam"], jpeg_quality=None)
    img = _sensor_and_finish(irr, cam, np.random.default_rng(p["noise_seed"]))
    if _is_grey(ref):
        # a greyscale photograph's recapture is stored greyscale too (else "exactly grey" marks originals)
        luma = np.rint(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        img = np.repeat(_match_histograms(luma, ref[..., :1].astype(np.float32), rng).astype(np.uint8), 3, 2)
    else:
        img = _match_histograms(img.astype(np.float32), ref.astype(np.float32), rng).astype(np.uint8)
    img = _store(img, p["cam"]["jpeg_quality"])
    params = {"size": size, "scene": scene, "camera": p["cam"], "optics": p["optics"], "geometry": p["geo"],
              "display": p["display"], "shown": "the original's own pixels"}
    return img, {"class": "recaptured", **params}, None

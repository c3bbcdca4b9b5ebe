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

from recapfast.data.synth_optics import (_blur, _draw_camera, _draw_display, _expose, _f, _match_histograms,
                                         _photograph_display, _sensor_and_finish)
from recapfast.data.synth_scene import _draw_scene, _render_scene
from recapfast.io import atomic

GENERATOR_VERSION = "recapfast.synth/2"
CLASS_DIRS = ("original", "recaptured")


def _scene_params(sc: dict) -> dict:
    return {"leaves": sc["n"], "illum_amp": _f(sc["illum_amp"]), "vignette": _f(sc["vignette"]),
            "illuminant_rb": [_f(sc["illuminant"][0]), _f(sc["illuminant"][2])]}


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
    in parallel (default min(2, cpu count)).  ``progress(1)`` is called as each image finishes.
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
            progress(1)

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

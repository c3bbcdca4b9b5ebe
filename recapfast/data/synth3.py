"""Synthetic recapture data, generator v3: physically consistent recapture optics, subtle traces.

v2 (``recapfast.data.synth``) blurred the display's sub-pixel grid by a point spread of 0.03-0.12
*display* pixels while 1.2-3 display pixels fell on one sensor pixel: the recapturing camera had a
lens far sharper than its own pixels, so a saturated RGB dot pattern tens of grey levels deep
survived.  v3 defines every optical blur of the recapturing camera in SENSOR pixels, maps it onto the
display plane (x s display px per sensor px) and integrates the display's emission through it, so
the sub-pixel structure is attenuated exactly as the camera's modulation transfer attenuates it.

All arithmetic is numpy float32; image ``i`` of class ``c`` is a pure function of
``numpy.random.default_rng([seed, c, i])`` (plus the scene photos, if any).  Both classes draw
every parameter below in the same order from the same distributions (an original draws the display
and geometry too and does not use the display), so scene content, framing, exposure, noise, tone
and JPEG are identically distributed in the two classes.

Scenes
    procedural dead leaves (``recapfast.data.synth``'s scene model, resolution independent), or a random
    square region of a real photograph (``recapfast.data.scenes``: side log-uniform between the resolution
    the display and the plain capture's fine grid need and the photo's short side, so photos are not
    enlarged when they are large enough; mirror flip 50 %).
    With photo scenes, a share ``direct`` of the images (default 1.0: ``recapfast synth --direct``) use
    the photograph ITSELF: a photograph is already a camera's output, so the original is its own pixels
    (a random square crop, side log-uniform from the patch size, native pixels, to ``DIRECT_MAX_SCALE``
    times it, area-averaged to the patch) and the recapture SHOWS those pixels on the display and
    photographs them.  The two classes then differ by the display and the recapturing camera alone:
    * source spread (:func:`_source_variation`, both classes): photographs differ in sharpness and
      noise, so the crop gets a blur (p 0.5, sigma U(0.3, 1.2) px) and noise (p 0.5, sigma U(0.5, 3)
      grey levels) before it is an original or is shown;
    * the recapture's 8-bit output is rank matched per channel to the crop it showed (global statistics
      equal an original's), a greyscale photo's recapture is stored greyscale, and both classes are
      stored as JPEG with the same camera draw (probability ``jpeg_prob``, same quality range).
    Procedural scenes are treated the same way (:func:`_captured_scene`): the first camera's capture of the
    scene at the patch size is the "photograph" whose pixels the original is and the recapture shows.
    The rest of the images (``direct`` < 1) render the photo as a scene seen by the simulated cameras:
    the original a plain capture, the recapture a displayed capture (itself a second capture of a
    camera's output, so detectors learn to call such "originals" recaptured: docs/training.md).

Framing: s = display pixels per sensor pixel
    s = W_disp / (W_img * c): a displayed picture W_disp display px wide, log-uniform in
    [2560, 3840] (QHD to 4K content shown full screen), framed to fill a fraction c ~ U(0.85, 1.0)
    of an image stored W_img px wide, log-uniform in [2400, 4032] (4032: a 12 MP phone's or a 24 MP
    DSLR's stored width after the mild resizing common in collected data).  s spans 0.64 .. 1.88.
    Pixel pitches behind it: monitors 0.155 mm (27" 4K) - 0.233 mm (27" QHD), laptops 0.17-0.2 mm
    (panel data sheets); phone cameras 1.0-1.6 um pixels behind 4-6 mm lenses, DSLRs 3.7-6 um
    behind 35-85 mm, both framing the screen.  Left out on purpose: full-resolution shots of an FHD
    screen and close-ups of phone screens (s ~ 0.3-0.5: each display pixel spans 2-3 sensor px and the
    RGB stripes are plainly visible, v2's regime, no detector needed), and far or heavily downscaled
    shots (s > 2: the grid averages out and the trace is only the double capture's slight blur and
    correlated noise, below what a 64 px patch can reveal).  In this range the display grid aliases
    near the sensor's Nyquist frequency: faint moire and colour fringes.
    Rotation U(-5, 5) degrees (hand held), shift U(0, 1) display px.

Recapturing camera optics (sensor px; the SAME draw is used for the plain capture of originals)
    lens PSF: two Gaussians, a diffraction core of sigma U(0.25, 0.45) px (the Airy core of an
    f/1.5-2.2 phone lens at 1-1.6 um pixels, or f/4-8 at 4-6 um, has sigma ~0.42 lambda N / pitch =
    0.25-0.45 px) with weight U(0.4, 0.8), and an aberration halo of sigma U(0.7, 1.4) px; a single
    Gaussian would cut the modulation transfer near 1 cycle/px a hundredfold below a real lens's
    (the diffraction MTF at 0.7 of its cut-off is still 0.18), i.e. erase the moire real recaptures
    show; defocus: widens both by sigma U(0, 0.4) px; optical low-pass filter (birefringent 4-spot,
    separation U(0.6, 1.0) px) with probability 0.3 (most phones have none, many DSLRs do);
    pixel aperture: box of fill factor U(0.5, 1.0) (microlenses), integrated with 3x3 samples.

Display (``_draw_display``)
    gamma U(2.0, 2.6), black level U(0.001, 0.02), white-point gains U(0.9, 1.05); gamut: saturation
    k ~ U(0.85, 1.25) (matrix k I + (1 - k) J/3: a narrow panel desaturates, a wide-gamut panel
    without colour management saturates); RGB or BGR vertical stripes, stripe gap U(0.04, 0.14)
    and black-matrix row gap U(0.05, 0.3) of the pitch; veiling glare (ambient light reflected by
    the screen) U(0, 0.05) of white with a linear gradient up to +-50 % across the frame.

Rendering
    The displayed picture is a camera capture of the scene at display resolution D (first camera,
    v2's camera model, maybe JPEG).  The display's emission of channel c is
    sum_n P_c[n] h_c(u - n) g(v - m) (stripe and row boxes); convolving with the camera's Gaussian
    (sigma * s display px, per PSF component) is done in closed form per box (erf), evaluated on a
    fine grid of q >= 2.5 / (sigma_core s) samples per display px; the sensor samples it (bilinear) at each pixel's
    3x3 aperture points (x 4 OLPF spots), mapped through the similarity transform above.  A plain
    capture renders the scene over the same field of view at 2 samples per sensor px, blurs it by the
    same PSF and samples it with the same aperture/OLPF points and the same rotation.
    The recapture's irradiance is then histogram matched per channel to the plain capture's (v2's
    exact rank matching): global exposure, contrast, gamut and glare shifts, which would be a
    trivial global cue, become purely local effects.  Both then pass v2's sensor stages (CFA, shot
    and read noise, demosaic, white balance, tone curve, 8 bits, JPEG with ``jpeg_prob``).

Trace energy (:func:`trace_energy`): mean over frequencies of | |F(R)| - |F(P)| | / sqrt(H W) in
grey levels, R a recapture and P the plain capture of the same scene by the same camera with the same
noise field.  An eps-1 random sign pattern has 0.886 on this scale (sqrt(pi)/2).  The mean over
recaptures is bounded by :data:`TRACE_ENERGY_BOUND` (2.7 grey levels at 64 px; tested).
"""
from __future__ import annotations

import math

import numpy as np

from recapfast.data import scenes as scene_io
from recapfast.data.synth_direct import _encode, _recapture_photo, _source_variation, _store
from recapfast.data.synth_optics import _blur, _draw_camera, _expose, _f, _match_histograms, _sensor_and_finish
from recapfast.data.synth_scene import _draw_scene, _render_scene

GENERATOR_VERSION = "recapfast.synth/3.1"   # 3.1: photos used directly in BOTH classes (3: originals only)
CLASS_DIRS = ("original", "recaptured")
SIGN_PATTERN_ENERGY = math.sqrt(math.pi) / 2.0   # mean |F| / sqrt(N) of an i.i.d. +-1 pattern
# Documented bound on the mean trace energy of v3 recaptures at 64 px (grey levels; tested): about
# three times an eps-1 sign pattern, a third of v2's trace (computed the same way against the plain
# capture by its recapturing camera: mean 8.3 over 30 scenes).  v3's measured value is in docs/training.md.
TRACE_ENERGY_BOUND = 2.7
_F32 = np.float32
DIRECT_MAX_SCALE = 1.25      # a photo's own pixels: native (1x) to 1.25x area-averaged, log-uniform
_PLAIN_Q = 2                                      # fine samples per sensor px of a plain capture


# --------------------------------------------------------------------------------------------
# parameter draws (same order for both classes)
# --------------------------------------------------------------------------------------------

def _draw_geometry(rng: np.random.Generator) -> dict:
    w_disp = math.exp(rng.uniform(math.log(2560.0), math.log(3840.0)))
    w_img = math.exp(rng.uniform(math.log(2400.0), math.log(4032.0)))
    frac = rng.uniform(0.85, 1.0)
    s = w_disp / (w_img * frac)
    return {"scale": _f(s), "rotation_deg": _f(rng.uniform(-5.0, 5.0)),
            "shift": [_f(x) for x in rng.uniform(0.0, 1.0, 2)],
            "display_width_px": int(round(w_disp)), "image_width_px": int(round(w_img)), "frame_fill": _f(frac)}


def _draw_optics(rng: np.random.Generator) -> dict:
    olpf = bool(rng.random() < 0.3)
    return {"core_sigma": _f(rng.uniform(0.25, 0.45)), "halo_sigma": _f(rng.uniform(0.7, 1.4)),
            "core_weight": _f(rng.uniform(0.4, 0.8)), "defocus_sigma": _f(rng.uniform(0.0, 0.4)),
            "olpf": _f(rng.uniform(0.6, 1.0)) if olpf else None, "fill_factor": _f(rng.uniform(0.5, 1.0))}


def _draw_display(rng: np.random.Generator) -> dict:
    return {"gamma": _f(rng.uniform(2.0, 2.6)), "black": _f(rng.uniform(0.001, 0.02)),
            "white_gains": [_f(x) for x in rng.uniform(0.9, 1.05, 3)], "saturation": _f(rng.uniform(0.85, 1.25)),
            "bgr": bool(rng.random() < 0.5), "gap_h": _f(rng.uniform(0.04, 0.14)), "gap_v": _f(rng.uniform(0.05, 0.3)),
            "glare": _f(rng.uniform(0.0, 0.05)), "glare_grad": [_f(x) for x in rng.uniform(-0.5, 0.5, 2)]}


# --------------------------------------------------------------------------------------------
# optics
# --------------------------------------------------------------------------------------------

def _psf(opt: dict) -> list[tuple[float, float]]:
    """The lens PSF as (weight, sigma in sensor px) Gaussians: diffraction core + aberration halo,
    each widened by the defocus blur."""
    w = opt["core_weight"]
    return [(w, math.hypot(opt["core_sigma"], opt["defocus_sigma"])),
            (1.0 - w, math.hypot(opt["halo_sigma"], opt["defocus_sigma"]))]


def _sample_points(size: int, opt: dict) -> tuple[np.ndarray, np.ndarray]:
    """Sensor-plane sample positions (centred coordinates, sensor px): [size*size, K] x and y."""
    a = opt["fill_factor"]
    off = ((np.arange(3) + 0.5) / 3.0 - 0.5) * a
    ox, oy = np.meshgrid(off, off)
    ox, oy = ox.ravel(), oy.ravel()
    if opt["olpf"]:
        d = opt["olpf"] / 2.0
        spots = np.array([(-d, -d), (d, -d), (-d, d), (d, d)])
        ox = (ox[:, None] + spots[None, :, 0]).ravel()
        oy = (oy[:, None] + spots[None, :, 1]).ravel()
    base = np.arange(size) + 0.5 - size / 2.0
    yy, xx = np.meshgrid(base, base, indexing="ij")
    return xx.reshape(-1, 1) + ox[None, :], yy.reshape(-1, 1) + oy[None, :]


def _bilinear_mean(fine: np.ndarray, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """Mean over the K sample points of each pixel of the bilinear interpolation of fine (H, W, 3) at
    fine-grid index coordinates (u: column, v: row); returns (size, size, 3)."""
    h, w, _ = fine.shape
    u = np.clip(u, 0.0, w - 1.000001)
    v = np.clip(v, 0.0, h - 1.000001)
    iu, iv = np.floor(u).astype(np.intp), np.floor(v).astype(np.intp)
    fu, fv = (u - iu).astype(_F32)[..., None], (v - iv).astype(_F32)[..., None]
    top = fine[iv, iu] * (1 - fu) + fine[iv, iu + 1] * fu
    bot = fine[iv + 1, iu] * (1 - fu) + fine[iv + 1, iu + 1] * fu
    val = top * (1 - fv) + bot * fv
    return val.mean(axis=1).reshape(size, size, 3).astype(_F32)


def _to_field(x, y, geo: dict, scale: float, center: float, q: float):
    """Sensor (x, y) -> fine-grid index coordinates of a field whose grid has q samples per unit and
    whose unit is scale x sensor px, centred at ``center`` units (rotation and shift of geo)."""
    th = math.radians(geo["rotation_deg"])
    ct, st = math.cos(th), math.sin(th)
    sx, sy = geo["shift"]
    u = center + sx * (scale / geo["scale"]) + scale * (ct * x - st * y)
    v = center + sy * (scale / geo["scale"]) + scale * (st * x + ct * y)
    return u * q - 0.5, v * q - 0.5


def _plain_irradiance(render, d: int, geo: dict, opt: dict, size: int) -> np.ndarray:
    """Sensor irradiance (size, size, 3) of a plain capture of the scene field that spans d display px."""
    extent = d / geo["scale"]                          # the scene field in sensor px
    n = max(8, int(math.ceil(_PLAIN_Q * extent)))
    q = n / extent                                     # fine samples per sensor px
    scene = render(n)
    fine = sum(_F32(w) * _blur(scene, sig * q) for w, sig in _psf(opt))
    x, y = _sample_points(size, opt)
    u, v = _to_field(x, y, geo, 1.0, extent / 2.0, q)
    return _bilinear_mean(fine, u, v, size)


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and scipy is not a dependency.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def _box_blur_weights(lo: float, hi: float, sigma: float, q: int, k: int) -> np.ndarray:
    """w[r, j] = integral over [lo, hi] of a Gaussian(sigma) centred at j + (r + 0.5) / q: the blurred
    emission of a display pixel j pixels away at fine phase r."""
    pos = np.arange(-k, k + 1)[None, :] + (np.arange(q)[:, None] + 0.5) / q
    c = 1.0 / (math.sqrt(2.0) * sigma)
    return (0.5 * (_erf((pos - lo) * c) - _erf((pos - hi) * c))).astype(_F32)


def _upsample_axis(p: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """out[n*q + r] = sum_j w[r, j + k] p[n - j] along ``axis`` (zero outside)."""
    q, taps = w.shape
    k = taps // 2
    p = np.moveaxis(p, axis, 0)
    n = p.shape[0]
    pad = np.zeros((n + 2 * k,) + p.shape[1:], _F32)
    pad[k:k + n] = p
    out = np.zeros((n, q) + p.shape[1:], _F32)
    for j in range(-k, k + 1):
        src = pad[k - j:k - j + n]
        for r in range(q):
            out[:, r] += w[r, j + k] * src
    out = out.reshape((n * q,) + p.shape[1:])
    return np.moveaxis(out, 0, axis)


def _display_field(lin: np.ndarray, disp: dict, sigma_d: float, q: int) -> np.ndarray:
    """Emission of the display (D, D, 3 linear drive values) blurred by a Gaussian of sigma_d display
    px, on a fine grid of q samples per display px: (D q, D q, 3)."""
    k = int(math.ceil(3.0 * sigma_d + 1.0))
    gv = disp["gap_v"]
    wv = _box_blur_weights(gv / 2.0, 1.0 - gv / 2.0, sigma_d, q, k)
    width = 1.0 / 3.0 - disp["gap_h"]
    chans = []
    for c in range(3):
        slot = (2 - c) if disp["bgr"] else c
        lo = slot / 3.0 + disp["gap_h"] / 2.0
        wh = _box_blur_weights(lo, lo + width, sigma_d, q, k)
        rows = _upsample_axis(lin[..., c], wh, axis=1)
        chans.append(_upsample_axis(rows, wv, axis=0))
    return np.stack(chans, axis=2) * _F32(3.0 / ((1.0 - gv) * (1.0 - 3.0 * disp["gap_h"])))


def _recapture_irradiance(shown: np.ndarray, disp: dict, geo: dict, opt: dict, size: int) -> np.ndarray:
    d = shown.shape[0]
    lin = (shown.astype(_F32) / 255.0) ** _F32(disp["gamma"])
    k = disp["saturation"]
    mix = k * np.eye(3) + (1.0 - k) / 3.0
    lin = np.clip(lin @ mix.T.astype(_F32), 0.0, None)
    lin = (_F32(disp["black"]) + (1.0 - _F32(disp["black"])) * lin) * np.array(disp["white_gains"], _F32)
    psf = _psf(opt)
    q = int(np.clip(math.ceil(2.5 / (min(sig for _, sig in psf) * geo["scale"])), 1, 12))
    fine = sum(_F32(w) * _display_field(lin, disp, sig * geo["scale"], q) for w, sig in psf)
    n = fine.shape[0]
    ramp = (np.arange(n, dtype=_F32) + 0.5) / n - 0.5
    gx, gy = disp["glare_grad"]
    glare = _F32(disp["glare"]) * (1.0 + _F32(gx) * ramp[None, :] + _F32(gy) * ramp[:, None])
    fine += glare[..., None] * np.array(disp["white_gains"], _F32)
    x, y = _sample_points(size, opt)
    u, v = _to_field(x, y, geo, geo["scale"], d / 2.0, q)
    return _bilinear_mean(fine, u, v, size)


# --------------------------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------------------------

class SceneSource:
    """Where scenes come from: procedural dead leaves and/or regions of real photographs.

    ``photos``: linear float32 arrays (``recapfast.data.scenes.load_photos``); ``procedural``: the share
    of images with a procedural scene (1.0 when there are no photos).
    """

    def __init__(self, photos: list[np.ndarray] | None = None, names: list[str] | None = None,
                 procedural: float = 1.0, direct: float = 0.0):
        self.photos = list(photos or [])
        self.names = list(names or [f"photo{i}" for i in range(len(self.photos))])
        self.procedural = 1.0 if not self.photos else float(procedural)
        self.direct = float(direct)

    def draw(self, rng: np.random.Generator, size: int, d: int):
        """(render(n) -> (n, n, 3) linear radiance over the scene field, JSON-able description,
        direct() -> the photo itself as a (size, size, 3) uint8 crop, or None for procedural scenes)."""
        use_proc = bool(rng.random() < self.procedural)
        if use_proc or not self.photos:
            sc = _draw_scene(rng, size)
            return (lambda n: _render_scene(sc, n)), {"kind": "procedural", "leaves": sc["n"]}, None
        idx = int(rng.integers(0, len(self.photos)))
        photo = self.photos[idx]
        # The plain capture renders the region at _PLAIN_Q samples per sensor px (about _PLAIN_Q * d / s
        # samples): a smaller region would be enlarged (bicubic), i.e. blurred in the plain captures only.
        region = scene_io.draw_region(rng, photo.shape[1], photo.shape[0], max(d, _PLAIN_Q * 1.15 * size + 8))
        own = scene_io.draw_region(rng, photo.shape[1], photo.shape[0], size, DIRECT_MAX_SCALE * size)
        desc = {"kind": "photo", "photo": self.names[idx], **{k: (_f(v) if isinstance(v, float) else v)
                                                             for k, v in region.items()}}

        def direct(seed: int):
            """The photo's own pixels over region ``own`` at the patch size, as a camera of random sharpness
            and noise stored them (:func:`_source_variation`): what an original is, and what a recapture shows."""
            img, var = _source_variation(_encode(scene_io.render_region(photo, own, size)), seed)
            return img, {"kind": "photo, used directly", "photo": self.names[idx], **var,
                         **{k: (_f(v) if isinstance(v, float) else v) for k, v in own.items()}}
        return (lambda n: scene_io.render_region(photo, region, n)), desc, direct


PROCEDURAL = SceneSource(direct=1.0)     # procedural-only sets: the first camera's capture, used directly
_PLAIN_PROCEDURAL = SceneSource()         # trace_energy's definition: recapture vs plain capture of one scene


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def _draw_all(size: int, rng: np.random.Generator, scenes: SceneSource, jpeg_prob: float) -> dict:
    geo = _draw_geometry(rng)
    th = math.radians(geo["rotation_deg"])
    d = int(math.ceil(geo["scale"] * size * (abs(math.cos(th)) + abs(math.sin(th))))) + 4
    geo["display_px"] = d
    render, scene, direct = scenes.draw(rng, size, d)
    use_direct = bool(rng.random() < scenes.direct)
    p = {"geo": geo, "render": render, "scene": scene, "direct": direct if use_direct else None,
         "cam1": _draw_camera(rng, jpeg_prob),
         "cam": _draw_camera(rng, jpeg_prob), "optics": _draw_optics(rng), "display": _draw_display(rng),
         "noise_seed": int(rng.integers(0, 2 ** 63 - 1)), "d": d}
    if use_direct and direct is None:
        p["direct"] = _captured_scene(p, size)
    return p


def _captured_scene(p: dict, size: int):
    """A procedural scene's "photograph": the first camera's capture of it at the patch size (same optics draw,
    its own noise field, its JPEG), with the source spread; used like a real photo's pixels in both classes."""
    def direct(seed: int):
        irr = _expose(_plain_irradiance(p["render"], p["d"], p["geo"], p["optics"], size), p["cam1"])
        img = _sensor_and_finish(irr, p["cam1"], np.random.default_rng([int(seed), 17]))
        img, var = _source_variation(img, seed)
        return img, {**p["scene"], "used": "first camera's capture, directly", **var}
    return direct


def _render_drawn(size: int, recaptured: bool, p: dict, rng: np.random.Generator, with_plain: bool = False):
    if not recaptured and p["direct"] is not None:
        img, scene = p["direct"](p["noise_seed"])
        img = _store(img, p["cam"]["jpeg_quality"])  # stored as JPEG as often, and as hard, as a recapture
        return img, {"class": "original", "size": size, "scene": scene, "jpeg_quality": p["cam"]["jpeg_quality"]}, None
    if recaptured and p["direct"] is not None and not with_plain:
        return _recapture_photo(size, p, rng)
    plain = _plain_irradiance(p["render"], p["d"], p["geo"], p["optics"], size)
    plain = _expose(plain, p["cam"])
    noise = lambda: np.random.default_rng(p["noise_seed"])  # noqa: E731 - one noise field per image
    params = {"size": size, "scene": p["scene"], "camera": p["cam"], "optics": p["optics"], "geometry": p["geo"]}
    if not recaptured:
        return _sensor_and_finish(plain, p["cam"], noise()), {"class": "original", **params}, None
    shown = _sensor_and_finish(_expose(_blur(p["render"](p["d"]), p["cam1"]["lens_sigma"]), p["cam1"]), p["cam1"], rng)
    irr = _recapture_irradiance(shown, p["display"], p["geo"], p["optics"], size)
    irr = _match_histograms(irr, plain, rng)
    img = _sensor_and_finish(irr, p["cam"], noise())
    ref = _sensor_and_finish(plain, p["cam"], noise()) if with_plain else None
    return img, {"class": "recaptured", **params, "camera1": p["cam1"], "display": p["display"]}, ref


def render(size: int, recaptured: bool, rng: np.random.Generator, *, jpeg_prob: float = 0.3,
           scenes: SceneSource | None = None) -> tuple[np.ndarray, dict]:
    """One (size, size, 3) uint8 image and the dict of its parameters (JSON-able).

    Depends only on ``size``, ``recaptured``, ``jpeg_prob``, the scene source and the state of ``rng``.
    """
    img, params, _ = render_pair(size, recaptured, rng, jpeg_prob=jpeg_prob, scenes=scenes, with_plain=False)
    return img, params


def render_pair(size: int, recaptured: bool, rng: np.random.Generator, *, jpeg_prob: float = 0.3,
                scenes: SceneSource | None = None, with_plain: bool = True):
    """(image, params, plain): ``plain`` is the plain capture of the same scene by the same camera with
    the same noise field (None for originals, which are plain captures)."""
    size = int(size)
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if not 0.0 <= jpeg_prob <= 1.0:
        raise ValueError(f"jpeg_prob must be in [0, 1], got {jpeg_prob}")
    p = _draw_all(size, rng, scenes or PROCEDURAL, jpeg_prob)
    return _render_drawn(size, bool(recaptured), p, rng, with_plain=with_plain)


def spectral_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frequencies and channels of | |F(a)| - |F(b)| | / sqrt(H W), in grey levels."""
    fa = np.abs(np.fft.fft2(a.astype(np.float64), axes=(0, 1)))
    fb = np.abs(np.fft.fft2(b.astype(np.float64), axes=(0, 1)))
    return float(np.mean(np.abs(fa - fb)) / math.sqrt(a.shape[0] * a.shape[1]))


def trace_energy(size: int, count: int, seed: int = 0, jpeg_prob: float = 0.0,
                 scenes: SceneSource | None = None) -> dict:
    """Per-class spectral trace energy over ``count`` scenes (see the module docstring).

    recaptured: recapture vs the plain capture of its scene (same camera, same noise field);
    original: an original vs a second capture of the same scene by the same camera with a fresh noise
    field (the capture-to-capture variation a detector must look through).  Grey levels.
    """
    rec, orig = [], []
    for i in range(int(count)):
        img, _, plain = render_pair(size, True, np.random.default_rng([seed, 1, i]), jpeg_prob=jpeg_prob,
                                    scenes=scenes or _PLAIN_PROCEDURAL)
        rec.append(spectral_difference(img, plain))
        p = _draw_all(size, np.random.default_rng([seed, 0, i]), scenes or _PLAIN_PROCEDURAL, jpeg_prob)
        a, _, _ = _render_drawn(size, False, p, None)
        p["noise_seed"] = p["noise_seed"] ^ 0x5DEECE66D
        b, _, _ = _render_drawn(size, False, p, None)
        orig.append(spectral_difference(a, b))
    stats = lambda v: {"mean": float(np.mean(v)), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)),  # noqa: E731
                       "max": float(np.max(v))}
    return {"size": size, "count": int(count), "seed": int(seed), "jpeg_prob": jpeg_prob,
            "recaptured": stats(rec), "original": stats(orig), "sign_pattern_eps1": SIGN_PATTERN_ENERGY}


def render_indexed(size: int, label: int, index: int, seed: int, jpeg_prob: float = 0.3,
                   scenes: SceneSource | None = None) -> tuple[np.ndarray, dict]:
    """Image ``index`` of class ``label`` (0 original, 1 recaptured) of the data set ``seed``."""
    return render(size, bool(label), np.random.default_rng([int(seed), int(label), int(index)]),
                  jpeg_prob=jpeg_prob, scenes=scenes)


__all__ = ["render", "render_pair", "render_indexed", "trace_energy", "spectral_difference", "SceneSource",
           "GENERATOR_VERSION", "CLASS_DIRS", "SIGN_PATTERN_ENERGY", "TRACE_ENERGY_BOUND"]

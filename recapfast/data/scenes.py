"""Real-photograph scenes for ``recapfast.data.synth3`` (``recapfast synth OUT --scenes DIR``).

A scene folder holds ordinary photographs (any format ``recapfast.data.folder.decode`` reads, found
recursively in sorted path order).  Each usable photo becomes a *scene*: its sRGB pixels are
linearized (``(v / 255) ** 2.2``) and every rendered image views a random square region of it
(random position, side and mirror flip; see :func:`draw_region`), resampled to whatever grid the
simulated optics need (area average when shrinking, bicubic when enlarging).

Splits are by SOURCE PHOTO: :func:`split_photos` assigns whole photos to train/val/test, so no
photograph contributes crops to two splits.  Files that cannot serve as a scene (undecodable,
empty, smaller than :data:`MIN_SIDE` pixels) are skipped with one message each; a folder with no
usable photo is a :class:`~recapfast.data.folder.DataError`.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from recapfast.data.folder import DataError, DecodeError, decode, iter_images

MIN_SIDE = 96          # a photo narrower than this cannot give varied crops even at 64 px
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Photo:
    name: str            # path relative to the scene folder (POSIX separators)
    sha256: str
    width: int
    height: int


def load_photos(folder, log: Callable[[str], None] | None = None, max_pixels: int = 40_000_000
                ) -> tuple[list[Photo], list[np.ndarray], list[tuple[str, str]]]:
    """Decode every photo of ``folder``: (photos, linear float32 arrays, skipped (name, reason)).

    Raises DataError when the folder does not exist or holds no usable photo.
    """
    log = log or (lambda _msg: None)
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise DataError(f"--scenes {root}: no such folder")
    photos, arrays, skipped = [], [], []
    for path in iter_images(root):
        name = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            with open(path, "rb") as fh:
                content = fh.read()
            img, _ = decode(path, max_pixels=max_pixels, content=content)
            if min(img.shape[:2]) < MIN_SIDE:
                raise DecodeError(f"{img.shape[1]}x{img.shape[0]} is smaller than {MIN_SIDE} px on a side")
        except (DecodeError, OSError) as err:
            reason = str(err) if isinstance(err, DecodeError) else f"{type(err).__name__}: {err}"
            skipped.append((name, reason))
            log(f"recapfast: skipping scene {path}: {reason}")
            continue
        photos.append(Photo(name, hashlib.sha256(content).hexdigest(), int(img.shape[1]), int(img.shape[0])))
        arrays.append(linearize(img))
    if not photos:
        raise DataError(f"--scenes {root}: no usable photograph ({len(skipped)} file(s) skipped)")
    return photos, arrays, skipped


def linearize(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB-ish [H, W, 3] -> linear radiance float32 in [0, 1] (gamma 2.2)."""
    return ((img.astype(np.float32) / np.float32(255.0)) ** np.float32(2.2)).astype(np.float32)


def split_photos(photos: Sequence[Photo], fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Indices of ``photos`` per split; whole photos only, each split gets >= 1 photo when it has a
    positive fraction and there are enough photos.  Depends only on (the set of names, fractions, seed)."""
    n = len(photos)
    order = sorted(range(n), key=lambda i: photos[i].name)
    perm = np.random.default_rng([int(seed), 7_772_201]).permutation(n)
    order = [order[i] for i in perm]
    wanted = [f > 0 for f in fractions]
    counts = [int(math.floor(f * n + 1e-9)) for f in fractions]
    for k in range(len(counts)):            # every requested split gets a photo while photos remain
        if wanted[k] and counts[k] == 0 and sum(counts) < n:
            counts[k] = 1
    while sum(counts) > n:                  # give back from the largest
        counts[counts.index(max(counts))] -= 1
    k = 0
    while sum(counts) < n:                  # the rest, in order, to requested splits
        if wanted[k % len(counts)]:
            counts[k % len(counts)] += 1
        k += 1
    out, start = {}, 0
    for name, c in zip(SPLIT_NAMES, counts):
        out[name] = sorted(order[start:start + c], key=lambda i: photos[i].name)
        start += c
    return out


def draw_region(rng: np.random.Generator, width: int, height: int, min_side: float) -> dict:
    """A random square region of a photo: side log-uniform in [min(min_side, short side), short side]."""
    short = min(width, height)
    lo = min(float(min_side), float(short))
    side = float(math.exp(rng.uniform(math.log(lo), math.log(short)))) if short > lo else float(short)
    return {"x0": float(rng.uniform(0.0, width - side)), "y0": float(rng.uniform(0.0, height - side)),
            "side": side, "flip": bool(rng.random() < 0.5)}


def render_region(photo: np.ndarray, region: dict, n: int) -> np.ndarray:
    """The region of a linear photo resampled to an (n, n, 3) float32 grid covering it."""
    from PIL import Image

    x0, y0, side = region["x0"], region["y0"], region["side"]
    box = (x0, y0, x0 + side, y0 + side)
    resample = Image.Resampling.BOX if n <= side else Image.Resampling.BICUBIC
    out = np.empty((n, n, 3), np.float32)
    for c in range(3):
        im = Image.fromarray(np.ascontiguousarray(photo[..., c]), mode="F")
        out[..., c] = np.asarray(im.resize((n, n), resample=resample, box=box), dtype=np.float32)
    if region["flip"]:
        out = out[:, ::-1]
    return np.clip(out, 0.0, None)


def sample_photo_paths() -> list[str]:
    """The photographs scikit-image and scikit-learn ship (for tests and the bundled models), if installed.

    Licences (from their docstrings/READMEs): astronaut, rocket, hubble_deep_field: public domain (NASA,
    SpaceX); chelsea, coffee, camera, brick, grass, gravel, cell: CC0; coins, immunohistochemistry, text:
    no known copyright restrictions; clock: public domain; china.jpg, flower.jpg (scikit-learn): CC BY 2.0
    (danielbuechele, vultilion on Flickr).
    """
    paths = []
    try:
        import skimage

        d = os.path.join(os.path.dirname(skimage.__file__), "data")
        for name in SKIMAGE_PHOTOS:
            p = os.path.join(d, name)
            if os.path.isfile(p):
                paths.append(p)
    except ImportError:
        pass
    try:
        import sklearn.datasets

        d = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        for name in ("china.jpg", "flower.jpg"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                paths.append(p)
    except ImportError:
        pass
    return paths


SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "rocket.jpg")

__all__ = ["Photo", "load_photos", "split_photos", "draw_region", "render_region", "sample_photo_paths",
           "linearize", "export_sample_photos", "SPLIT_NAMES", "MIN_SIDE", "HELDOUT_PHOTOS"]


HELDOUT_PHOTOS = ("chelsea.png", "coffee.png", "china.jpg", "flower.jpg")


def export_sample_photos(out_dir) -> dict[str, list[str]]:
    """Copy the shipped sample photos into OUT/train/ (scene photos for ``recapfast synth --scenes``) and
    OUT/heldout/original/ (never-recaptured photos held out for checking that a detector calls real
    photographs original: a labelled folder for ``recapfast eval --tile``).  Returns the names per folder."""
    from recapfast.io import atomic

    out = {"train": [], "heldout": []}
    for path in sample_photo_paths():
        name = os.path.basename(path)
        part = "heldout" if name in HELDOUT_PHOTOS else "train"
        dest = os.path.join(os.fspath(out_dir), part, "original" if part == "heldout" else "", name)
        with open(path, "rb") as fh:
            atomic.write_file(dest, fh.read(), mkdir=True, durable=False)
        out[part].append(name)
    if not out["train"]:
        raise DataError("no sample photos found: pip install scikit-image scikit-learn (the test extra)")
    return out


if __name__ == "__main__":     # python -m recapfast.data.scenes OUT: export the sample photos
    import sys

    print(export_sample_photos(sys.argv[1] if len(sys.argv) > 1 else "photos"))

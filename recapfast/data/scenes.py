"""Real-photograph scenes for ``recapfast.data.synth3`` (``recapfast synth OUT --scenes DIR``).

A scene folder holds ordinary photographs (any format ``recapfast.data.folder.decode`` reads, found
recursively in sorted path order).  Each usable photo becomes a *scene*: its sRGB pixels are
linearized (``(v / 255) ** 2.2``) and every rendered image views a random square region of it
(random position, side and mirror flip; see :func:`draw_region`), resampled to whatever grid the
simulated optics need (area average when shrinking, bicubic when enlarging).

Splits are by SOURCE: :func:`split_photos` assigns whole sources to train/val/test, so no photograph
contributes crops to two splits.  A source is one photo, or a GROUP of shots of one scene (a stereo
pair, a calibration series) named in the folder's optional :data:`GROUPS_FILE`; byte-identical files
are one source too.  Several folders (``--scenes a --scenes b``) form one pool, their names prefixed
with the folder's base name.  Files that cannot serve as a scene (undecodable,
empty, smaller than :data:`MIN_SIDE` pixels) are skipped with one message each; a folder with no
usable photo is a :class:`~recapfast.data.folder.DataError`.
"""
from __future__ import annotations

import hashlib
import json
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
    group: str | None = None     # source group (GROUPS_FILE, identical bytes); None: the photo is its own source

    @property
    def source(self) -> str:
        return self.group if self.group is not None else self.name


GROUPS_FILE = "scene_groups.json"    # {"group": ["name", ...], ...}: photos of one scene, split together


def folder_prefixes(folders: Sequence) -> list[str]:
    """Name prefixes of several scene folders: their base names (numbered ``1-name`` when two coincide)."""
    base = [os.path.basename(os.path.normpath(os.fspath(f))) or "scenes" for f in folders]
    return base if len(set(base)) == len(base) else [f"{i + 1}-{b}" for i, b in enumerate(base)]


def load_photos(folder, log: Callable[[str], None] | None = None, max_pixels: int = 40_000_000
                ) -> tuple[list[Photo], list[np.ndarray], list[tuple[str, str]]]:
    """Decode every photo of ``folder``: (photos, linear float32 arrays, skipped (name, reason)).

    ``folder``: a path, or a list of paths forming one pool (names become ``<prefix>/<name>``, see
    :func:`folder_prefixes`; a one-element list is the same as its path).  Groups come from each
    folder's :data:`GROUPS_FILE`; byte-identical photos share the first one's source.
    Raises DataError when a folder does not exist or holds no usable photo.
    """
    if isinstance(folder, (list, tuple)):
        folders = list(folder)
        if not folders:
            raise DataError("--scenes: no folder given")
        if len(folders) > 1:
            photos, arrays, skipped = [], [], []
            for prefix, f in zip(folder_prefixes(folders), folders):
                p, a, s = _load_folder(f, log, max_pixels)
                photos += [Photo(f"{prefix}/{x.name}", x.sha256, x.width, x.height,
                                 None if x.group is None else f"{prefix}/{x.group}") for x in p]
                arrays += a
                skipped += [(f"{prefix}/{n}", r) for n, r in s]
            return _merge_identical(photos), arrays, skipped
        folder = folders[0]
    photos, arrays, skipped = _load_folder(folder, log, max_pixels)
    return _merge_identical(photos), arrays, skipped


def _merge_identical(photos: list[Photo]) -> list[Photo]:
    """Byte-identical photos are one source (the first one's): a copy can never land in another split."""
    first: dict[str, str] = {}
    out = []
    for p in photos:
        src = first.setdefault(p.sha256, p.source)
        out.append(p if src == p.source else Photo(p.name, p.sha256, p.width, p.height, src))
    return out


def read_groups(root: str) -> dict[str, str]:
    """name -> group from ``root/GROUPS_FILE`` ({} when there is none); a malformed file is a DataError."""
    path = os.path.join(root, GROUPS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict) or not all(isinstance(g, str) and isinstance(v, list)
                                                 and all(isinstance(n, str) for n in v) for g, v in data.items()):
            raise ValueError('expected {"group": ["photo name", ...], ...}')
    except (OSError, ValueError) as err:
        raise DataError(f"--scenes {root}: bad {GROUPS_FILE}: {err}") from err
    out = {}
    for group, names in data.items():
        for n in names:
            if out.setdefault(n, group) != group:
                raise DataError(f"--scenes {root}: bad {GROUPS_FILE}: {n} is in groups {out[n]} and {group}")
    return out


def _load_folder(folder, log, max_pixels):
    log = log or (lambda _msg: None)
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise DataError(f"--scenes {root}: no such folder")
    groups = read_groups(root)
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
        group = groups.get(name)
        photos.append(Photo(name, hashlib.sha256(content).hexdigest(), int(img.shape[1]), int(img.shape[0]),
                            None if group is None else f"group:{group}"))
        arrays.append(linearize(img))
    if not photos:
        raise DataError(f"--scenes {root}: no usable photograph ({len(skipped)} file(s) skipped)")
    return photos, arrays, skipped


def linearize(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB-ish [H, W, 3] -> linear radiance float32 in [0, 1] (gamma 2.2)."""
    return ((img.astype(np.float32) / np.float32(255.0)) ** np.float32(2.2)).astype(np.float32)


def split_photos(photos: Sequence[Photo], fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Indices of ``photos`` per split; whole SOURCES only (:attr:`Photo.source`: a photo, or its group),
    each split gets >= 1 source when it has a positive fraction and there are enough sources; the
    fractions count sources.  Depends only on (the set of (name, source) pairs, fractions, seed); with
    one photo per source it is the earlier split by photo name, unchanged."""
    keys = sorted({p.source for p in photos})
    n = len(keys)
    perm = np.random.default_rng([int(seed), 7_772_201]).permutation(n)
    order = [keys[i] for i in perm]
    wanted = [f > 0 for f in fractions]
    counts = [int(math.floor(f * n + 1e-9)) for f in fractions]
    for k in range(len(counts)):            # every requested split gets a source while sources remain
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
        chosen = set(order[start:start + c])
        out[name] = sorted((i for i, p in enumerate(photos) if p.source in chosen), key=lambda i: photos[i].name)
        start += c
    return out


def draw_region(rng: np.random.Generator, width: int, height: int, min_side: float,
                max_side: float | None = None) -> dict:
    """A random square region of a photo: side log-uniform in [min(min_side, s), s], s the short side
    (or ``max_side`` when it is smaller)."""
    short = min(width, height) if max_side is None else max(1.0, min(width, height, float(max_side)))
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

HELDOUT_PHOTOS = ("chelsea.png", "coffee.png", "china.jpg", "flower.jpg")

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"     # Debian/Ubuntu: apt-get install opencv-doc

# The real camera photographs among OpenCV's sample data (opencv/samples/data, BSD/Apache-licensed
# project; curated by eye, see docs/data.md "Real scenes" for every file left out and why):
# (file, group: shots of one scene share it and are split together, what it is).
OPENCV_PHOTOS = (
    ("aero1.jpg", "aero", "aerial view of a town"),
    ("aero3.jpg", "aero", "same town, another view"),
    ("aloeL.jpg", "aloe", "Middlebury stereo pair, aloe plant"),
    ("aloeR.jpg", "aloe", "its right view"),
    ("basketball1.png", "basketball", "indoor video frame, greyscale"),
    ("basketball2.png", "basketball", "the next frame"),
    ("blox.jpg", "blox", "blocks on a table, greyscale"),
    ("board.jpg", "board", "circuit board close-up"),
    ("box.png", "box", "cookie box, greyscale"),
    ("box_in_scene.png", "box", "the same box in a cluttered scene"),
    ("building.jpg", "building", "office building"),
    ("butterfly.jpg", "butterfly", "butterfly on a leaf"),
    ("chicky_512.png", "chicky", "dog close-up"),
    ("ela_original.jpg", "ela", "notebook close-up (the unedited one of the ELA pair)"),
    ("fruits.jpg", "fruits", "cut fruit"),
    ("graf1.png", "graf", "graffiti wall (Oxford affine set)"),
    ("graf3.png", "graf", "the same wall from another angle"),
    ("home.jpg", "home", "palace facade and sky"),
    ("leuvenA.jpg", "leuven", "street with old houses"),
    ("leuvenB.jpg", "leuven", "the same street, other exposure"),
    ("left.jpg", "books", "stereo pair: books on a floor, low light"),
    ("right.jpg", "books", "its right view"),
    ("left01.jpg", "calib", "stereo calibration series: chessboard in an office, greyscale"),
    ("left06.jpg", "calib", "4 of its 26 shots (the rest would weigh one scene 26x)"),
    ("right08.jpg", "calib", "calibration series, right camera"),
    ("right13.jpg", "calib", "calibration series, right camera"),
    ("licenseplate_motion.jpg", "licenseplate", "car, real motion blur"),
    ("messi5.jpg", "messi", "football match (sports photo)"),
    ("pca_test1.jpg", "pca_test1", "dark parts on a light box"),
    ("rubberwhale1.png", "rubberwhale", "Middlebury optical-flow frame, toys"),
    ("rubberwhale2.png", "rubberwhale", "the next frame"),
    ("smarties.png", "smarties", "sweets on white"),
    ("squirrel_cls.jpg", "squirrel", "squirrel on a branch"),
    ("stuff.jpg", "stuff", "pen, coin, lighter on a table"),
    ("sudoku.png", "sudoku", "newspaper sudoku, phone photo"),
    ("text_defocus.jpg", "text_defocus", "printed page, real defocus"),
    ("text_motion.jpg", "text_motion", "printed page, real motion blur"),
)

# Held out from every training set (whole groups only): different kinds of scene.
OPENCV_HELDOUT_GROUPS = ("leuven", "squirrel", "board", "basketball")

# Every other image file of OPENCV_DATA and why it is not a scene (docs/data.md lists the same).
OPENCV_SKIPPED = (
    ("Blender_Suzanne1.jpg", "3D render"), ("Blender_Suzanne2.jpg", "3D render"),
    ("HappyFish.jpg", "drawing"), ("LinuxLogo.jpg", "logo"), ("WindowsLogo.jpg", "logo"),
    ("aloeGT.png", "disparity map, not a photo"),
    ("apple.jpg", "scan of a print (the pyramid-blending pair with orange.jpg; scan lines visible)"),
    ("baboon.jpg", "scan of a printed photo (USC-SIPI mandrill): a recapture itself"),
    ("orange.jpg", "scan of a printed photo (scan lines visible): a recapture itself"),
    ("cards.png", "drawing"), ("chessboard.png", "synthetic pattern"), ("detect_blob.png", "synthetic shapes"),
    ("digits.png", "handwritten digit tiles"), ("ela_modified.jpg", "spliced (Tux pasted in): a forgery demo"),
    ("ellipses.jpg", "synthetic noisy ellipses"), ("gradient.png", "synthetic gradient"),
    ("imageTextN.png", "rendered text"), ("imageTextR.png", "rendered text, rotated"),
    ("mask.png", "synthetic mask"), ("ml.png", "3D render"), ("notes.png", "music notation drawing"),
    ("opencv-logo.png", "logo"), ("opencv-logo-white.png", "logo"),
    ("pic1.png", "synthetic shapes"), ("pic2.png", "synthetic shapes and noise"), ("pic3.png", "drawn shapes"),
    ("pic4.png", "synthetic shapes and texture"), ("pic5.png", "synthetic shapes"), ("pic6.png", "synthetic shapes"),
    ("starry_night.jpg", "painting reproduction"), ("templ.png", "synthetic mask"), ("tmpl.png", "synthetic mask"),
    *((f"{side}{i:02d}.jpg", "calibration series: 4 of 26 near-identical shots kept")
      for side in ("left", "right") for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)
      if f"{side}{i:02d}.jpg" not in ("left01.jpg", "left06.jpg", "right08.jpg", "right13.jpg")),
)

__all__ = ["Photo", "load_photos", "split_photos", "draw_region", "render_region", "sample_photo_paths",
           "linearize", "export_sample_photos", "export_scene_pool", "read_groups", "folder_prefixes",
           "SPLIT_NAMES", "MIN_SIDE", "HELDOUT_PHOTOS", "GROUPS_FILE", "OPENCV_DATA", "OPENCV_PHOTOS",
           "OPENCV_HELDOUT_GROUPS", "OPENCV_SKIPPED", "main"]


def export_scene_pool(out_dir, opencv_dir=None, log: Callable[[str], None] | None = None) -> dict:
    """Copy the real-photo scene pool into OUT/train/ (scene photos for ``recapfast synth --scenes``,
    with :data:`GROUPS_FILE`) and OUT/heldout/original/ (never-recaptured photos held out from every
    training set, for checking that a detector calls real photographs original: a labelled folder for
    ``recapfast eval --tile``).  The pool: the scikit-image/scikit-learn samples plus
    :data:`OPENCV_PHOTOS` from ``opencv_dir`` (default :data:`OPENCV_DATA`; ``""``: the samples only).
    Without opencv-doc it exports the samples and logs one line saying so.  Returns {"train": names, "heldout": names,
    "groups": {group: names}, "missing": opencv files not found}; DataError when there is nothing to export."""
    from recapfast.io import atomic

    log = log or (lambda _msg: None)
    src_dir = os.fspath(OPENCV_DATA if opencv_dir is None else opencv_dir)
    out_dir = os.fspath(out_dir)
    files = []                                      # (path, name, group or None, held out)
    for path in sample_photo_paths():
        name = os.path.basename(path)
        files.append((path, name, None, name in HELDOUT_PHOTOS))
    present = os.path.isdir(src_dir) if src_dir else None          # "": the samples only, no message
    missing = []
    for name, group, _what in OPENCV_PHOTOS if src_dir else ():
        path = os.path.join(src_dir, name)
        if os.path.isfile(path):
            files.append((path, name, group, group in OPENCV_HELDOUT_GROUPS))
        else:
            missing.append(name)
    if not any(not held for _p, _n, _g, held in files):
        raise DataError("no sample photos found: pip install scikit-image scikit-learn (the test extra)")
    if present is False:
        log(f"recapfast: opencv-doc not found ({src_dir}): exported the scikit-image/scikit-learn photos only; "
            f"for the {len(OPENCV_PHOTOS)} OpenCV photos too: apt-get install opencv-doc")
    elif missing:
        log(f"recapfast: {len(missing)} of the {len(OPENCV_PHOTOS)} OpenCV photos are missing from {src_dir} "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): apt-get install --reinstall opencv-doc")
    names = [n for _p, n, _g, _h in files]
    if len(set(names)) != len(names):
        raise DataError("scene pool: two photos share a file name")        # a curation error, never user input
    out = {"train": [], "heldout": [], "groups": {}, "missing": missing}
    for path, name, group, held in files:
        dest = os.path.join(out_dir, "heldout", "original", name) if held else os.path.join(out_dir, "train", name)
        with open(path, "rb") as fh:
            atomic.write_file(dest, fh.read(), mkdir=True, durable=False)
        out["heldout" if held else "train"].append(name)
        if group is not None:
            out["groups"].setdefault(group, []).append(name)
    train = set(out["train"])
    groups = {g: v for g, v in out["groups"].items() if len(v) > 1 and set(v) <= train}
    if groups:
        atomic.write_text(os.path.join(out_dir, "train", GROUPS_FILE), json.dumps(groups, indent=1, sort_keys=True),
                          mkdir=True, durable=False)
    return out


def export_sample_photos(out_dir) -> dict[str, list[str]]:
    """The scikit-image/scikit-learn samples only (the pool of the bundled models' data): {"train", "heldout"} names."""
    out = export_scene_pool(out_dir, opencv_dir="")
    return {"train": out["train"], "heldout": out["heldout"]}


def summary(out_dir, out: dict) -> str:
    """One line: how many photos (and sources) went where."""
    def sources(names):
        grp = {n: g for g, v in out["groups"].items() for n in v}
        return len({grp.get(n, n) for n in names})
    return (f"exported {len(out['train']) + len(out['heldout'])} real photographs: {len(out['train'])} scenes "
            f"({sources(out['train'])} sources) to {os.path.join(os.fspath(out_dir), 'train')}, "
            f"{len(out['heldout'])} held out ({sources(out['heldout'])} sources) to "
            f"{os.path.join(os.fspath(out_dir), 'heldout', 'original')}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recapfast.data.scenes [--samples-only] [OUT]`` (default ``photos``): export the scene pool
    (``--samples-only``: the 15 scikit samples, the pool of the bundled models' data), print one summary line."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    samples_only = "--samples-only" in argv
    rest = [a for a in argv if a != "--samples-only"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        print("usage: python -m recapfast.data.scenes [--samples-only] [OUT]", file=sys.stderr)
        return 2
    out_dir = rest[0] if rest else "photos"
    try:
        if samples_only:
            res = export_scene_pool(out_dir, opencv_dir="")
            res["missing"] = []
        else:
            res = export_scene_pool(out_dir, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except DataError as err:
        print(f"recapfast: {err}", file=sys.stderr)
        return 1
    print(summary(out_dir, res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

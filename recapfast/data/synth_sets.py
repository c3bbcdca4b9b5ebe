"""Write synthetic data sets to disk with either generator (``recapfast synth``).

``generator="v3"`` (default, ``recapfast.data.synth3``) or ``"v2"`` (``recapfast.data.synth``, kept for
reproducing earlier results).  Without scenes the layout is ``OUT/{original,recaptured}/NNNNNN.png``
plus ``OUT/manifest.json`` (procedural scenes).  With a scene folder (v3 only) the photos are split
by SOURCE PHOTO into train/val/test (``split`` fractions) and each split is its own labelled folder,
``OUT/<split>/{original,recaptured}/``, with ``count x fraction`` images per class, its own RNG
stream ``[seed, 1000 + split index, class, i]`` and ``OUT/manifest.json`` listing which photos went
where; a share ``procedural`` of each split's images uses procedural scenes instead of photos.
A share ``direct`` (default 1.0) of the photo-scene images use the photograph itself in both classes:
the original is its pixels, the recapture shows those pixels on the display and photographs them
(``recapfast.data.synth3``, generator ``recapfast.synth/3.1``); the rest render the photo as a scene seen by
the simulated cameras (a plain capture as the original, which detectors learn to call recaptured: it is itself a
second capture of a camera's output; docs/training.md).  ``procedural`` defaults to 0: real photographs only.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from recapfast.data.folder import DataError
from recapfast.io import atomic

GENERATORS = ("v3", "v2")
CLASS_DIRS = ("original", "recaptured")

_WORKER: dict = {}


def _init_worker(photos, names, procedural, direct=0.0):
    from recapfast.data.synth3 import SceneSource

    _WORKER["scenes"] = SceneSource(photos, names, procedural, direct) if photos is not None \
        else SceneSource(direct=direct)


def _render(job: tuple):
    out_dir, rel, size, label, key, jpeg_prob, generator = job
    rng = np.random.default_rng(list(key))
    if generator == "v2":
        from recapfast.data.synth import render
        img, params = render(size, bool(label), rng, jpeg_prob=jpeg_prob)
    else:
        from recapfast.data.synth3 import render
        img, params = render(size, bool(label), rng, jpeg_prob=jpeg_prob, scenes=_WORKER.get("scenes"))
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    data = buf.getvalue()
    with open(os.path.join(out_dir, rel), "wb") as fh:
        fh.write(data)
    return rel, hashlib.sha256(data).hexdigest(), params


def _check_out(out: Path, folders: Sequence[Path]) -> None:
    for sub in folders:
        if sub.exists() and any(sub.iterdir()):
            raise FileExistsError(f"{sub} is not empty; synth refuses to write into it "
                                  f"(choose a new output folder or empty it first)")
    if (out / "manifest.json").exists():
        raise FileExistsError(f"{out / 'manifest.json'} already exists; choose a new output folder")


def _run(jobs: list, workers: int, init_args: tuple, progress) -> dict:
    results = {}
    if workers == 1 or len(jobs) < 16:
        _init_worker(*init_args)
        for job in jobs:
            rel, digest, params = _render(job)
            results[rel] = {"file": rel, "sha256": digest, "params": params}
            if progress:
                progress(1)
        return results
    with mp.get_context().Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        for rel, digest, params in pool.imap_unordered(_render, jobs, chunksize=max(1, min(32, len(jobs) // (8 * workers)))):
            results[rel] = {"file": rel, "sha256": digest, "params": params}
            if progress:
                progress(1)
    return results


def synthesize(out_dir, size: int = 64, count: int = 1000, seed: int = 0, workers: int | None = None,
               jpeg_prob: float = 0.3, progress: Callable[[int], None] | None = None, generator: str = "v3",
               scenes_dir=None, split: Sequence[float] = (0.8, 0.1, 0.1), procedural: float = 0.0,
               direct: float = 1.0, log: Callable[[str], None] | None = None) -> dict:
    """Write ``count`` originals and ``count`` recaptures (per class; split over train/val/test when
    ``scenes_dir`` is given: a folder, or a list of folders forming one pool) and ``manifest.json``;
    returns the manifest.  Raises FileExistsError if a
    class folder already holds files, DataError on a bad argument or a scene folder without photos."""
    size, count, seed = int(size), int(count), int(seed)
    if generator not in GENERATORS:
        raise DataError(f"--generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    if generator == "v2" and scenes_dir is None:
        from recapfast.data.synth import synthesize as synthesize_v2
        return synthesize_v2(out_dir, size=size, count=count, seed=seed, workers=workers, jpeg_prob=jpeg_prob,
                             progress=progress)
    if generator == "v2":
        raise DataError("--scenes needs --generator v3 (v2 renders procedural scenes only)")
    checks = [(size >= 8, f"--size must be at least 8, got {size}"), (count >= 0, f"--count must be >= 0, got {count}"),
              (seed >= 0, f"--seed must be >= 0, got {seed}"),
              (0.0 <= jpeg_prob <= 1.0, f"--jpeg-prob must be in [0, 1], got {jpeg_prob}"),
              (0.0 <= procedural <= 1.0, f"--procedural must be in [0, 1], got {procedural}"),
              (0.0 <= direct <= 1.0, f"--direct must be in [0, 1], got {direct}"),
              (len(split) == 3 and min(split) >= 0 and abs(sum(split) - 1.0) < 1e-6,
               f"--split must be three fractions >= 0 that sum to 1, got {list(split)}")]
    for ok, message in checks:
        if not ok:
            raise DataError(message)
    out = Path(out_dir)
    workers = max(1, int(workers if workers is not None else min(2, os.cpu_count() or 1)))
    from recapfast.data.synth3 import GENERATOR_VERSION

    manifest = {"generator": GENERATOR_VERSION, "size": size, "count": count, "seed": seed,
                "jpeg_prob": float(jpeg_prob), "classes": {n: i for i, n in enumerate(CLASS_DIRS)}}
    if scenes_dir is None:
        _check_out(out, [out / c for c in CLASS_DIRS])
        for c in CLASS_DIRS:
            (out / c).mkdir(parents=True, exist_ok=True)
        jobs = [(str(out), f"{CLASS_DIRS[label]}/{i:06d}.png", size, label, (seed, label, i), float(jpeg_prob), "v3")
                for i in range(count) for label in (0, 1)]
        res = _run(jobs, workers, (None, None, 1.0, direct), progress)
        manifest.update(rng="numpy.random.default_rng([seed, label, index])", scenes="procedural",
                        files=[res[j[1]] for j in sorted(jobs, key=lambda j: (j[3], j[1]))])
    else:
        from recapfast.data import scenes as scene_io

        names = ("train", "val", "test")
        _check_out(out, [out / n / c for n in names for c in CLASS_DIRS])
        photos, arrays, skipped = scene_io.load_photos(scenes_dir, log=log)
        parts = scene_io.split_photos(photos, split, seed)
        folders = list(scenes_dir) if isinstance(scenes_dir, (list, tuple)) else [scenes_dir]
        folder = (os.path.basename(os.path.normpath(os.fspath(folders[0]))) if len(folders) == 1
                  else scene_io.folder_prefixes(folders))
        manifest.update(scenes={"folder": folder,
                                "procedural_share": procedural, "direct_original_share": direct,
                                "photos": [{"name": p.name, "sha256": p.sha256, "width": p.width, "height": p.height,
                                            **({} if p.group is None else {"group": p.group})}
                                           for p in photos],
                                "skipped": [{"name": n, "reason": r} for n, r in skipped],
                                "split_fractions": list(split)},
                        rng="numpy.random.default_rng([seed, 1000 + split index, label, index])", splits={})
        for k, name in enumerate(names):
            n_split = int(round(count * split[k]))
            if n_split == 0:
                continue
            idx = parts[name]
            for c in CLASS_DIRS:
                (out / name / c).mkdir(parents=True, exist_ok=True)
            jobs = [(str(out), f"{name}/{CLASS_DIRS[label]}/{i:06d}.png", size, label, (seed, 1000 + k, label, i),
                     float(jpeg_prob), "v3") for i in range(n_split) for label in (0, 1)]
            share = procedural if idx else 1.0
            res = _run(jobs, workers, ([arrays[i] for i in idx], [photos[i].name for i in idx], share, direct),
                       progress)
            manifest["splits"][name] = {"count": n_split, "photos": [photos[i].name for i in idx],
                                        "procedural_share": share,
                                        "files": [res[j[1]] for j in sorted(jobs, key=lambda j: (j[3], j[1]))]}
    atomic.write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


__all__ = ["synthesize", "GENERATORS"]

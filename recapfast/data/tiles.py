"""Tile-based training sets for the reduced reproduction protocol (``recapfast reproduce --train-tile T``).

LaplacianCNN ends in global average pooling, so a model trained on T x T tiles runs unchanged on
S x S images.  With ``--train-tile`` the train and validation images of a size S are cut into their
non-overlapping T x T tiles (grid anchored at the top-left corner, row-major; (S // T)^2 tiles per
image, written as PNG files named ``<image>__rRcC.png``), the models train and validate on the tiles
(every training iteration then costs what it costs at T px, whatever S is), and the test images are
evaluated whole at S x S.  Tiles of one image stay in its split, so no image leaks across splits.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from recapfast.data.folder import CLASS_NAMES, Sample, decode
from recapfast.io import atomic


def write_tiles(samples: list[Sample], data_root: Path, out_root: Path, tile: int) -> int:
    """Tiles of every sample under out_root/<class>/; returns the number of tiles written."""
    n = 0
    for c in CLASS_NAMES:
        (out_root / c).mkdir(parents=True, exist_ok=True)
    for s in samples:
        img, _ = decode(s.path)
        rows, cols = img.shape[0] // tile, img.shape[1] // tile
        rel = os.path.relpath(s.path, data_root / CLASS_NAMES[s.label])
        stem = os.path.splitext(rel.replace(os.sep, "__"))[0]
        for r in range(rows):
            for c in range(cols):
                patch = np.ascontiguousarray(img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile])
                atomic.write_file(out_root / CLASS_NAMES[s.label] / f"{stem}__r{r}c{c}.png", durable=False,
                                  writer=lambda fh, p=patch: Image.fromarray(p, "RGB").save(fh, format="PNG"))
                n += 1
    return n


def materialize_tiles(parts: dict[str, list[Sample]], data_root: Path, split_root: Path, tile: int,
                      presplit: bool = False) -> dict:
    """Replace split_root/train and split_root/val by tile folders; returns tiles per split.
    ``presplit``: the data lies in data_root/<split>/<class>/ (see splits.materialize_split)."""
    counts = {}
    for name in ("train", "val"):
        target = split_root / name
        if target.exists():
            shutil.rmtree(target)
        counts[name] = write_tiles(parts[name], Path(data_root) / name if presplit else data_root, target, tile)
    return counts


__all__ = ["write_tiles", "materialize_tiles"]

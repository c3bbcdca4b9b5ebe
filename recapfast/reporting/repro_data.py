"""The data of a reproduction: the content manifest of an image folder and the deterministic
per-class 40/10/50 train/val/test split, materialized as folders of relative symlinks (``train`` and
``evaluate_folder`` take folders)."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Sequence

from recapfast.data.folder import CLASS_NAMES, Sample

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FRACTIONS = (0.4, 0.1, 0.5)


def data_manifest(samples: Sequence[Sample], root) -> dict:
    """sha256 over the sorted (relative path, label, sha256 of the file's bytes) lines, plus counts."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        with open(s.path, "rb") as fh:
            content = hashlib.sha256(fh.read()).hexdigest()
        rel = os.path.relpath(s.path, root)
        digest.update(f"{rel}\t{s.label}\t{content}\n".encode("utf-8", "surrogateescape"))
    per_class = [sum(1 for s in samples if s.label == c) for c in range(len(CLASS_NAMES))]
    return {"sha256": digest.hexdigest(), "files": len(samples), "per_class": per_class}


def split_counts(n: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """Sizes of the train/val/test parts of n items (rounded; test takes the rest)."""
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    return n_train, n_val, n - n_train - n_val


def split_samples(samples: Sequence[Sample], seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS
                  ) -> dict[str, list[Sample]]:
    """Deterministic per-class split into train/val/test: a seeded permutation of each class's
    sorted paths, cut at 40/10/50.  Depends only on (the set of paths, labels, seed)."""
    import numpy as np

    parts: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: s.path)
        order = np.random.default_rng([int(seed), 104_729, int(label)]).permutation(len(group))
        n_train, n_val, _ = split_counts(len(group), fractions)
        cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        for name, idx in cuts.items():
            parts[name].extend(group[i] for i in sorted(idx.tolist()))
    return parts


def _link_name(sample: Sample, root: Path) -> str:
    rel = os.path.relpath(sample.path, root / CLASS_NAMES[sample.label])
    return rel.replace(os.sep, "__")


def materialize_split(parts: dict[str, list[Sample]], data_root: Path, split_root: Path) -> None:
    """split_root/<part>/<class>/<file> as relative symlinks to the data (no image copies)."""
    if split_root.exists():
        shutil.rmtree(split_root)        # a half-written split from a killed run
    for name, samples in parts.items():
        for c in CLASS_NAMES:
            (split_root / name / c).mkdir(parents=True, exist_ok=True)
        for s in samples:
            link = split_root / name / CLASS_NAMES[s.label] / _link_name(s, data_root)
            os.symlink(os.path.relpath(os.path.abspath(s.path), link.parent), link)


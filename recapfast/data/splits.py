"""The one split and the one manifest hash of a labelled data set.

:func:`split_samples` is the only way recapfast divides a data set: per class (labels in
ascending order), the class's samples are permuted by a generator seeded from (seed, label) and
the permutation is cut into consecutive parts of :func:`split_counts` sizes; every part keeps
the class's own order.  Two callers, two settings (each bit-identical to what it produced before
the two copies were merged, so committed splits and resumable runs are unchanged):

- ``recapfast reproduce`` (the defaults): train/val/test = 40/10/50, samples ordered by path (the
  split depends only on the set of paths), numpy's ``default_rng([seed, 104729, label])``;
- ``recapfast train`` without ``--val`` (:data:`HOLDOUT`): the held-out fraction first, the rest
  for training, samples in the given (discovery) order, ``torch.randperm`` seeded
  ``seed + 7919 * label``, and at least one image held out of a class that has two or more.

:func:`manifest_hash` identifies a data set by the sorted (relative path, ..., label) lines:
``content=False`` hashes byte sizes (cheap; recorded in checkpoints), ``content=True`` the
sha256 of every file (``recapfast reproduce``'s :func:`data_manifest`).
:func:`materialize_split` lays a split out as folders of relative symlinks (``train`` and
``evaluate_folder`` take folders).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Sequence

from recapfast.data.folder import CLASS_NAMES, Sample

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FRACTIONS = (0.4, 0.1, 0.5)
GENERATORS = ("numpy", "torch")
# recapfast train's validation split: (held out, train); see the module docstring.
HOLDOUT = {"names": ("val", "train"), "by_path": False, "generator": "torch", "min_first": 1}


def split_counts(n: int, fractions: Sequence[float] = SPLIT_FRACTIONS, min_first: int = 0) -> tuple[int, ...]:
    """Sizes of the parts of n items: round(n * fraction) for every part but the last, which takes the rest.

    ``min_first``: a group of more than ``min_first`` items gives the first part at least that many;
    a smaller group gives it none.
    """
    counts = [int(round(n * f)) for f in fractions[:-1]]
    if min_first and counts:
        counts[0] = max(min_first, counts[0]) if n > min_first else 0
    return (*counts, n - sum(counts))


def _permutation(generator: str, seed: int, label: int, n: int) -> list[int]:
    if generator == "numpy":
        import numpy as np

        return np.random.default_rng([int(seed), 104_729, int(label)]).permutation(n).tolist()
    if generator == "torch":
        import torch

        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919 * label)).tolist()
    raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")


def split_samples(samples: Sequence[Sample], seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS,
                  names: Sequence[str] = SPLIT_NAMES, *, by_path: bool = True, generator: str = "numpy",
                  min_first: int = 0) -> dict[str, list[Sample]]:
    """Deterministic per-class split: {name: samples} (see the module docstring).

    ``by_path``: order each class by path first (the split then does not depend on the input order);
    ``generator``: "numpy" or "torch" (the permutation); ``min_first``: see :func:`split_counts`.
    """
    if len(names) != len(fractions):
        raise ValueError(f"{len(names)} split names for {len(fractions)} fractions")
    parts: dict[str, list[Sample]] = {name: [] for name in names}
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        if by_path:
            group.sort(key=lambda s: s.path)
        order = _permutation(generator, seed, label, len(group))
        start = 0
        for name, count in zip(names, split_counts(len(group), fractions, min_first)):
            parts[name].extend(group[i] for i in sorted(order[start:start + count]))
            start += count
    return parts


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): ``recapfast train``'s validation split of one folder (:data:`HOLDOUT`)."""
    parts = split_samples(samples, seed, (fraction, 1.0 - fraction), **HOLDOUT)
    return parts["train"], parts["val"]


def manifest_hash(samples: Sequence[Sample], root, content: bool = False) -> str:
    """sha256 of the sorted (relative path, byte size, label) lines, or with ``content`` of the sorted
    (relative path, label, sha256 of the file's bytes) lines: identifies a data set."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        rel = os.path.relpath(s.path, root)
        if content:
            with open(s.path, "rb") as fh:
                line = f"{rel}\t{s.label}\t{hashlib.sha256(fh.read()).hexdigest()}\n"
        else:
            line = f"{rel}\t{os.path.getsize(s.path)}\t{s.label}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def data_manifest(samples: Sequence[Sample], root) -> dict:
    """The content :func:`manifest_hash` (``sha256``), the file count and the files per class."""
    per_class = [sum(1 for s in samples if s.label == c) for c in range(len(CLASS_NAMES))]
    return {"sha256": manifest_hash(samples, root, content=True), "files": len(samples), "per_class": per_class}


__all__ = ["GENERATORS", "HOLDOUT", "SPLIT_FRACTIONS", "SPLIT_NAMES", "data_manifest", "holdout_split",
           "manifest_hash", "split_counts", "split_samples"]


def _link_name(sample: Sample, root: Path) -> str:
    rel = os.path.relpath(sample.path, root / CLASS_NAMES[sample.label])
    return rel.replace(os.sep, "__")


def materialize_split(parts: dict[str, list[Sample]], data_root: Path, split_root: Path,
                      presplit: bool = False) -> None:
    """split_root/<part>/<class>/<file> as relative symlinks to the data (no image copies).

    ``presplit``: the data is already split as data_root/<part>/<class>/ (a synthesis split by source photo)."""
    if split_root.exists():
        shutil.rmtree(split_root)        # a half-written split from a killed run
    for name, samples in parts.items():
        root = Path(data_root) / name if presplit else Path(data_root)
        for c in CLASS_NAMES:
            (split_root / name / c).mkdir(parents=True, exist_ok=True)
        for s in samples:
            link = split_root / name / CLASS_NAMES[s.label] / _link_name(s, root)
            os.symlink(os.path.relpath(os.path.abspath(s.path), link.parent), link)


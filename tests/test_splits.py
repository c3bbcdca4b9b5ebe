"""The one split and manifest hash (recapfast.data.splits) give exactly what the two former copies gave.

``recapfast reproduce`` resumes from, and commits, the split it made for a seed; ``recapfast train``'s
validation split decides which checkpoint is kept.  The two algorithms they used before the merge are
written out below as the references, and the shared function must match them for every seed and size.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from recapfast.data.folder import Sample
from recapfast.data.splits import data_manifest, holdout_split, manifest_hash, split_counts, split_samples
from recapfast.training import train as train_mod


def old_train_split(samples, fraction, seed):
    train, held = [], []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        order = torch.randperm(len(group), generator=torch.Generator().manual_seed(seed + 7919 * label)).tolist()
        cut = max(1, int(round(len(group) * fraction))) if len(group) > 1 else 0
        held.extend(group[i] for i in sorted(order[:cut]))
        train.extend(group[i] for i in sorted(order[cut:]))
    return train, held


def old_reproduce_split(samples, seed, fractions=(0.4, 0.1, 0.5)):
    parts = {name: [] for name in ("train", "val", "test")}
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: s.path)
        order = np.random.default_rng([int(seed), 104_729, int(label)]).permutation(len(group))
        n_train, n_val = int(round(len(group) * fractions[0])), int(round(len(group) * fractions[1]))
        cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        for name, idx in cuts.items():
            parts[name].extend(group[i] for i in sorted(idx.tolist()))
    return parts


def samples_of(counts, shuffle_seed=None):
    # nested names where discovery order differs from path order ("a/..." is listed before "a-1.png")
    out = [Sample(f"/d/{c}/{'a/' if i % 3 == 0 else 'a-'}{i:03d}.png", label)
           for label, (c, n) in enumerate(zip(("original", "recaptured"), counts)) for i in range(n)]
    if shuffle_seed is not None:
        order = torch.randperm(len(out), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
        out = [out[i] for i in order]
    return out


@pytest.mark.parametrize("counts", [(1, 1), (2, 3), (7, 40), (50, 51), (200, 200)])
@pytest.mark.parametrize("seed", [0, 1, 3, 17, 12345])
def test_holdout_split_is_the_former_training_split(counts, seed):
    for shuffle in (None, seed):
        samples = samples_of(counts, shuffle)
        for fraction in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert holdout_split(samples, fraction, seed) == old_train_split(samples, fraction, seed)


@pytest.mark.parametrize("counts", [(1, 1), (2, 3), (10, 10), (33, 47), (200, 200)])
@pytest.mark.parametrize("seed", [0, 1, 3, 17, 12345])
def test_reproduce_split_is_the_former_reproduce_split(counts, seed):
    samples = samples_of(counts, seed)
    assert split_samples(samples, seed) == old_reproduce_split(samples, seed)
    assert split_samples(samples, seed, (0.5, 0.2, 0.3)) == old_reproduce_split(samples, seed, (0.5, 0.2, 0.3))


def test_reproduce_module_uses_the_shared_split():
    from recapfast.reproduction import run as rp

    assert rp.split_samples is split_samples and rp.data_manifest is data_manifest
    assert not hasattr(train_mod, "split_samples") and train_mod.manifest_hash is manifest_hash


def test_split_counts_and_bad_arguments():
    assert split_counts(33) == (13, 3, 17)
    assert split_counts(1, (0.75, 0.25), min_first=1) == (0, 1)        # a lone image is never held out
    assert split_counts(2, (0.05, 0.95), min_first=1) == (1, 1)        # but one of two is
    with pytest.raises(ValueError, match="generator"):
        split_samples(samples_of((3, 3)), 0, generator="python")
    with pytest.raises(ValueError, match="names"):
        split_samples(samples_of((3, 3)), 0, (0.5, 0.5))


def test_manifest_hashes(tmp_path):
    root = tmp_path / "data"
    files = []
    for label, cls in enumerate(("original", "recaptured")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            p = root / cls / f"{i}.png"
            p.write_bytes(bytes([label, i]) * (i + 1))
            files.append(Sample(str(p), label))
    by_size = hashlib.sha256("".join(f"{os.path.relpath(s.path, root)}\t{os.path.getsize(s.path)}\t{s.label}\n"
                                     for s in files).encode()).hexdigest()
    assert manifest_hash(list(reversed(files)), root) == by_size
    content = hashlib.sha256("".join(
        f"{os.path.relpath(s.path, root)}\t{s.label}\t{hashlib.sha256(open(s.path, 'rb').read()).hexdigest()}\n"
        for s in files).encode()).hexdigest()
    assert data_manifest(files, root) == {"sha256": content, "files": 6, "per_class": [3, 3]}
    (root / "original" / "0.png").write_bytes(b"\x09\x09")              # same size, other bytes
    assert manifest_hash(files, root) == by_size and manifest_hash(files, root, content=True) != content

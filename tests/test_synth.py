"""Tests of the synthetic recapture generator (recapfast.data.synth)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from recapfast.data import synth, synth3
from recapfast.models.laplacian import LaplacianCNN

SIZE = 64


# ------------------------------------------------------------------------------------------
# determinism and shapes
# ------------------------------------------------------------------------------------------

GENERATORS = pytest.mark.parametrize("generator", [synth, synth3], ids=["v2", "v3"])


@GENERATORS
@pytest.mark.parametrize("recaptured", [False, True])
def test_render_is_deterministic_by_seed(generator, recaptured):
    a, pa = generator.render(SIZE, recaptured, np.random.default_rng(7))
    b, pb = generator.render(SIZE, recaptured, np.random.default_rng(7))
    c, _ = generator.render(SIZE, recaptured, np.random.default_rng(8))
    assert a.tobytes() == b.tobytes() and pa == pb
    assert a.tobytes() != c.tobytes()
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8 and a.std() > 2.0
    json.dumps(pa)  # parameters are JSON-serialisable
    assert pa["class"] == ("recaptured" if recaptured else "original")


# sha256 of the uint8 pixels of render_indexed(size, label, index, seed=9) for size in (32, 37), label in (0, 1),
# index in 0..2, concatenated in that order; computed with the generators as they were before they were split into
# synth_scene/synth_optics (both classes, with and without the JPEG stage).  A data set is a pure function of its
# seed: any change to these images must be a deliberate new GENERATOR_VERSION.
# v2's float32 pipeline renders differently on the two CPU families this project's machines have (the hash
# below first, pinned on the Intel Xeon machines; the second measured on an AMD EPYC, numpy 2.4.6 at SIMD level
# X86_V3, where the code of 2026-11-29 gives it too, with Pillow 11.3-13.0 and numpy 2.3.5 alike); any change to
# the generator gives neither.  v3 renders the same on both.
PINNED_PIXELS = {
    "v2": ("46da9d48cd166df6bacb5392fc759b9a106e8097652ac7183d7255954a149fd2",
           "612f8fa37c6967ad0047d9e0aa376ee58274db2f5e0be200184ae86cc5322fc3"),
    "v3": ("f352208019857591958894e5a1b73b5174b7c9790559977226b0beb90aef973f",),
}


# recapfast.synth/3.1 uses each scene's first-camera capture directly in both classes (the default since 3.1);
# v3's pin above is the scene seen by the simulated cameras (synth3._PLAIN_PROCEDURAL), unchanged by 3.1.
# 3.1's pin was measured on an AMD EPYC only: on another CPU family an unknown hash skips with the hash to check
# and add (v2 showed that float32 pipelines can differ there), on AMD it fails.
PINNED_V31 = ("5288a907d8c4c19b5111f64ad62cd59532c8f3207571f7f81727460b27ed84f4",)


def _digest(generator, **kwargs) -> str:
    digest = hashlib.sha256()
    for size in (32, 37):
        for label in (0, 1):
            for index in range(3):
                img, _ = generator.render_indexed(size, label, index, seed=9, **kwargs)
                digest.update(img.tobytes())
    return digest.hexdigest()


@GENERATORS
def test_fixed_seed_images_are_unchanged(generator):
    if generator is synth:
        assert _digest(synth) in PINNED_PIXELS["v2"], f"{synth.GENERATOR_VERSION} renders other images"
        return
    assert _digest(synth3, scenes=synth3._PLAIN_PROCEDURAL) in PINNED_PIXELS["v3"], "v3's plain captures changed"
    got = _digest(synth3)
    if got not in PINNED_V31:
        with open("/proc/cpuinfo") as fh:
            amd = "AuthenticAMD" in fh.read()
        if not amd:
            pytest.skip(f"recapfast.synth/3.1 was pinned on AMD only; this CPU renders {got}: check and add it")
    assert got in PINNED_V31, f"{synth3.GENERATOR_VERSION} renders other images ({got})"


@pytest.mark.parametrize("size", [64, 80, 37])
@pytest.mark.parametrize("recaptured", [False, True])
def test_render_shape_and_dtype(size, recaptured):
    img, params = synth.render(size, recaptured, np.random.default_rng(size))
    assert img.shape == (size, size, 3)
    assert img.dtype == np.uint8
    assert params["class"] == ("recaptured" if recaptured else "original")
    assert params["size"] == size
    assert img.std() > 2.0  # not a blank frame


def test_render_indexed_uses_seed_class_index():
    a, _ = synth.render_indexed(SIZE, 1, 5, seed=3)
    b, _ = synth.render(SIZE, True, np.random.default_rng([3, 1, 5]))
    assert a.tobytes() == b.tobytes()


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError):
        synth.render(4, False, np.random.default_rng(0))
    with pytest.raises(ValueError):
        synth.render(SIZE, False, np.random.default_rng(0), jpeg_prob=1.5)


# ------------------------------------------------------------------------------------------
# synthesize: layout, manifest, refusal, parallel == serial
# ------------------------------------------------------------------------------------------

def test_synthesize_layout_manifest_and_refusal(tmp_path):
    out = tmp_path / "ds"
    seen = []
    man = synth.synthesize(out, size=SIZE, count=3, seed=11, workers=1, progress=seen.append)
    assert seen == [1] * 6                 # one call per finished image (the CLI's bar adds them)
    for cls in ("original", "recaptured"):
        names = sorted(p.name for p in (out / cls).iterdir())
        assert names == ["000000.png", "000001.png", "000002.png"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == man
    assert man["generator"] == synth.GENERATOR_VERSION
    assert (man["size"], man["count"], man["seed"], man["jpeg_prob"]) == (SIZE, 3, 11, 0.3)
    assert len(man["files"]) == 6
    for rec in man["files"]:
        data = (out / rec["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"]
        with Image.open(out / rec["file"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
        label = 1 if rec["file"].startswith("recaptured/") else 0
        assert rec["params"]["class"] == synth.CLASS_DIRS[label]
    # The saved file is exactly render_indexed's output.
    img, _ = synth.render_indexed(SIZE, 1, 2, seed=11)
    with Image.open(out / "recaptured" / "000002.png") as im:
        assert np.array_equal(np.asarray(im), img)

    with pytest.raises(FileExistsError, match="not empty"):
        synth.synthesize(out, size=SIZE, count=1, seed=0, workers=1)


def test_synthesize_parallel_matches_serial(tmp_path):
    a = synth.synthesize(tmp_path / "a", size=32, count=10, seed=5, workers=1)
    b = synth.synthesize(tmp_path / "b", size=32, count=10, seed=5, workers=2)
    c = synth.synthesize(tmp_path / "c", size=32, count=10, seed=6, workers=1)
    assert [f["sha256"] for f in a["files"]] == [f["sha256"] for f in b["files"]]
    assert [f["sha256"] for f in a["files"]] != [f["sha256"] for f in c["files"]]


# ------------------------------------------------------------------------------------------
# the classes differ by recapture traces, not by global statistics
# ------------------------------------------------------------------------------------------

N_PER_CLASS = 600


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """600 originals + 600 recaptures at 64 px, interleaved (even index original, odd recaptured)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    man = synth.synthesize(out, size=SIZE, count=N_PER_CLASS, seed=2024, workers=2)
    assert len(man["files"]) == 2 * N_PER_CLASS
    return _read_interleaved(out, N_PER_CLASS)


def _read_interleaved(out, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The images of a synthesized folder as (x [2 count, H, W, 3] uint8, labels), original i then recaptured i."""
    imgs, labels = [], []
    for i in range(count):
        for label, cls in enumerate(synth.CLASS_DIRS):
            with Image.open(out / cls / f"{i:06d}.png") as im:
                imgs.append(np.asarray(im))
            labels.append(label)
    return np.stack(imgs), np.array(labels)


def _global_statistics(x: np.ndarray) -> np.ndarray:
    """Per-channel mean, std and 16-bin histogram of each image (the 'trivia')."""
    xf = x.astype(np.float32)
    feats = [xf.mean(axis=(1, 2)), xf.std(axis=(1, 2))]
    bins = (x // 16).astype(np.int64)  # 16 bins of 16 grey levels
    n_px = x.shape[1] * x.shape[2]
    for c in range(3):
        flat = bins[..., c].reshape(len(x), -1)
        hist = np.stack([np.bincount(row, minlength=16) for row in flat]) / n_px
        feats.append(hist)
    return np.concatenate(feats, axis=1)


def _logistic_regression_accuracy(feats, labels, n_train, l2=1e-3):
    f = torch.tensor(feats, dtype=torch.float64)
    y = torch.tensor(labels)
    mu, sd = f[:n_train].mean(0), f[:n_train].std(0) + 1e-8
    f = (f - mu) / sd
    w = torch.zeros(f.shape[1], 2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f[:n_train] @ w + b, y[:n_train]) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (f[n_train:] @ w + b).argmax(1)
    return (pred == y[n_train:]).double().mean().item()


def test_global_statistics_do_not_separate_the_classes(dataset):
    x, y = dataset
    feats = _global_statistics(x)
    acc = _logistic_regression_accuracy(feats, y, n_train=len(y) // 2)
    print(f"\nlogistic regression on global statistics: held-out accuracy {acc:.3f}")
    assert acc <= 0.65


def test_laplacian_cnn_learns_the_recapture_traces(dataset):
    x, y = dataset
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    yt = torch.from_numpy(y)
    n_train = 800
    model = LaplacianCNN()
    steps = 300
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n_train, (32,), generator=gen)
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(xt[n_train:]).argmax(1)
    acc = (pred == yt[n_train:]).float().mean().item()
    print(f"\nLaplacianCNN after {steps} steps: held-out accuracy {acc:.3f}")
    assert acc >= 0.8

"""Shared fixtures: a small trained-free model, a synthetic labelled folder, hostile files, op backends."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recapfast as rf

# Tests never build the extension unless they ask for it (the `ext` fixture and `op_backend`'s ext case).
os.environ.setdefault("RECAPFAST_BACKEND", "torch")


@contextlib.contextmanager
def use_backend(name: str):
    """Run with the op backend ``name`` ('auto', 'ext', 'torch'), then restore the previous choice."""
    from recapfast import ops

    previous = ops._requested
    ops.set_backend(name)
    try:
        yield
    finally:
        ops.set_backend(previous)


@pytest.fixture(scope="session")
def ext():
    """The compiled extension, built (or loaded from the cache) once per test session."""
    from recapfast import ops
    from recapfast.ops import _build

    with use_backend("ext"):
        try:
            ops.active_backend()
        except RuntimeError as err:
            pytest.fail(f"the recapfast extension does not build here:\n{err}")
    return _build.STATE


@pytest.fixture(params=["torch", "ext"])
def op_backend(request, monkeypatch):
    """Run the test once with the PyTorch reference ops and once with the C++ extension (one build per session).

    The ext case fails unless the test really ran extension ops. Subprocesses started by the test inherit
    the choice through RECAPFAST_BACKEND (and the build cache).
    """
    from recapfast import ops

    if request.param == "ext":
        request.getfixturevalue("ext")
    served = []
    ext_serves = ops._ext_serves

    def counting(x, *args, **kwargs):
        answer = ext_serves(x, *args, **kwargs)
        served.append(answer)
        return answer

    monkeypatch.setattr(ops, "_ext_serves", counting)
    monkeypatch.setenv("RECAPFAST_BACKEND", request.param)
    with use_backend(request.param):
        yield request.param
    assert any(served) == (request.param == "ext"), f"{sum(served)} of {len(served)} op calls on the extension"


def make_model(seed: int = 0, widths=(4, 8, 8, 16, 16), num_classes: int = 2) -> rf.LaplacianCNN:
    """An untrained but 'warmed' model: BN running stats set from random data so eval mode is sane."""
    torch.manual_seed(seed)
    model = rf.LaplacianCNN(widths=widths, num_classes=num_classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).float())
    return model.eval()


class Autograd(torch.nn.Module):
    """The same function as a model recapfast does not fold: every gradient through autograd."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


TINY_WIDTHS = (4, 4, 8, 8, 8)


@pytest.fixture(scope="module")
def tiny() -> rf.LaplacianCNN:
    """The screening tests' tiny model (TINY_WIDTHS, seed 0), on one torch thread."""
    torch.set_num_threads(1)
    return make_model(0, widths=TINY_WIDTHS)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The tiny model saved as a checkpoint (bundled-style .safetensors + .json)."""
    return rf.save_checkpoint(make_model(0, widths=TINY_WIDTHS), tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture
def small_model() -> rf.LaplacianCNN:
    return make_model()


def random_batch(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded random uint8 images [count, 3, size, size] and labels in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (count,), generator=g)
    return x, y


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return random_batch(12, 32, seed=1)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic labelled folder (64 x 64), made once per session."""
    from recapfast.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(root, size=64, count=24, seed=77, workers=1)
    return root


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture
def hostile_dir(tmp_path, synth_dir) -> Path:
    """A labelled folder with good files plus: corrupt PNG, text named .png, grey PNG, RGBA PNG, odd JPEG."""
    import shutil

    root = tmp_path / "hostile"
    shutil.copytree(synth_dir, root, ignore=shutil.ignore_patterns("manifest.json"))
    rng = np.random.default_rng(5)
    good = sorted((root / "original").glob("*.png"))[0].read_bytes()
    (root / "original" / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "recaptured" / "notes.png").write_text("this is a text file, not an image\n")
    save_png(root / "original" / "grey.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    save_png(root / "recaptured" / "rgba.png", rng.integers(0, 256, (70, 66, 4), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (75, 99, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    (root / "original" / "odd.JPG").write_bytes(buf.getvalue())
    return root

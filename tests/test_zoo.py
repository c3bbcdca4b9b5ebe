"""Bring your own detector: a torch.export program and a pkg.module:factory model evaluate from the CLI with clean
and FGSM accuracies equal to a plain PyTorch loop; recapfast checkpoints of every architecture; clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from recapfast.cli import app
from recapfast.models.zoo import load_detector

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
NORM_FLAGS = ["--input-range", "1", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]


class NormalizedDetector(nn.Module):
    """A user's detector: trained on [0, 1] images normalized with MEAN/STD (torchvision style)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(h)).mean(dim=(2, 3)))


def make_detector() -> nn.Module:
    """The factory `--model test_zoo:make_detector` calls."""
    return NormalizedDetector()


def not_a_model():
    return 42


@pytest.fixture(scope="module")
def user_model():
    torch.manual_seed(11)
    model = NormalizedDetector()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def plain_loop(model, root: Path, size: int, eps_list):
    """Center crops read with Pillow, FGSM written out in pixel units through the model's own normalization."""
    files = [(p, 0) for p in sorted((root / "original").glob("*.png"))] + \
        [(p, 1) for p in sorted((root / "recaptured").glob("*.png"))]
    crops = []
    for path, _ in files:
        img = np.asarray(Image.open(path).convert("RGB"))
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        crops.append(img[top:top + size, left:left + size].transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(crops)).float()
    y = torch.tensor([label for _, label in files])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    f = lambda px: model((px / 255.0 - mean) / std)  # noqa: E731
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(f(xg), y, reduction="sum"), xg)
    with torch.no_grad():
        acc = {"clean": int((f(x).argmax(1) == y).sum()) / len(y)}
        for e in eps_list:
            adv = torch.round(torch.clamp(x + e * torch.sign(g), 0, 255))
            acc[e] = int((f(adv).argmax(1) == y).sum()) / len(y)
    return acc


def cli_accuracies(args) -> dict:
    out = Path(args[args.index("--json") + 1])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    return {"clean": data["clean_accuracy"], **{c["eps"]: c["accuracy"] for c in data["cells"]}}


def test_exported_program_equals_plain_loop(tmp_path, synth_dir, user_model):
    example = torch.randn(4, 3, 32, 32)
    program = torch.export.export(user_model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "user.pt2")
    got = cli_accuracies(["eval", str(synth_dir), "--model", str(tmp_path / "user.pt2"), *NORM_FLAGS, "--attack",
                          "fgsm", "--eps", "1,2,4", "--size", "32", "--json", str(tmp_path / "a.json"), "-q"])
    want = plain_loop(user_model, synth_dir, 32, [1.0, 2.0, 4.0])
    assert got == want and len(set(want.values())) > 1
    # A program exported with a fixed batch of 16 runs in zero-padded chunks; the numbers do not change.
    torch.export.save(torch.export.export(user_model, (torch.randn(16, 3, 32, 32),)), tmp_path / "fixed.pt2")
    fixed = cli_accuracies(["eval", str(synth_dir), "--model", str(tmp_path / "fixed.pt2"), *NORM_FLAGS, "--attack",
                            "fgsm", "--eps", "1,2,4", "--size", "32", "--batch-size", "20", "--json",
                            str(tmp_path / "b.json"), "-q"])
    assert fixed == want
    # ... and it refuses another patch size with the size it was exported for.
    r = CliRunner().invoke(app, ["eval", str(synth_dir), "--model", str(tmp_path / "fixed.pt2"), *NORM_FLAGS,
                                 "--size", "64", "-q"])
    assert r.exit_code == 1 and "--size 32" in r.output


def test_factory_with_weights_equals_plain_loop(tmp_path, synth_dir, user_model):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in user_model.state_dict().items()}, str(weights))
    got = cli_accuracies(["eval", str(synth_dir), "--model", "test_zoo:make_detector", "--weights", str(weights),
                          *NORM_FLAGS, "--attack", "fgsm", "--eps", "1,2,4", "--size", "32", "--json",
                          str(tmp_path / "f.json"), "-q"])
    assert got == plain_loop(user_model, synth_dir, 32, [1.0, 2.0, 4.0])


def test_one_logit_models_and_pixel_adapter(user_model):
    class OneLogit(nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2, 3)).unsqueeze(1) - 0.5

    from recapfast.models.pixels import InputAdapter, InputConvention

    adapter = InputAdapter(OneLogit(), InputConvention(1.0))
    x = torch.full((2, 3, 4, 4), 204.0)
    logits = adapter(x)
    assert torch.allclose(logits, torch.tensor([[0.0, 0.3], [0.0, 0.3]]))
    assert torch.allclose(logits.softmax(1)[:, 1], torch.sigmoid(torch.tensor(0.3)).expand(2))


def test_recapfast_checkpoints_of_every_arch(tmp_path, synth_dir):
    from recapfast.models.archs import build
    from recapfast.models.zoo import save_model

    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    for arch in ("laplacian", "bayar", "meso4"):
        model = build(arch).eval()
        path = save_model(model, tmp_path / f"{arch}.safetensors")
        loaded = load_detector(str(path))
        assert type(loaded) is type(model)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    cfg = json.loads((tmp_path / "bayar.json").read_text())
    assert cfg["model"]["arch"] == "BayarCNN"


@pytest.mark.parametrize("args,needle", [
    (["--model", "nope"], "--model nope"),
    (["--model", "robust", "--input-range", "1"], "pixel units"),
    (["--model", "robust", "--weights", "w.safetensors"], "--weights"),
    (["--model", "not_a_module_xyz:make"], "cannot import"),
    (["--model", "test_zoo:plain_loop"], "calling plain_loop() failed"),
    (["--model", "test_zoo:not_a_model"], "not a torch.nn.Module"),
    (["--model", "test_zoo:make_detector", "--input-range", "7"], "input range"),
])
def test_bad_model_specs_are_one_line_errors(tmp_path, synth_dir, args, needle):
    r = CliRunner().invoke(app, ["eval", str(synth_dir), *args, "--size", "32", "-q"])
    assert r.exit_code == 1 and needle in r.output, r.output


def test_not_a_program(tmp_path, synth_dir):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    r = CliRunner().invoke(app, ["eval", str(synth_dir), "--model", str(bad), "-q"])
    assert r.exit_code == 1 and "not a torch.export program" in r.output


def test_paper_names_zhaos_bundled_model(tmp_path, synth_dir):
    """`--model paper` is Zhao et al.'s eq. 5-7 model (the reproduction of the paper), whatever `robust` recommends;
    today both name the same weights, and the report's sha256 is that file's."""
    from recapfast.models.checkpoint import resolve, sha256_of

    paper = load_detector("paper")
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(paper(x), load_detector("robust")(x))
    cfg = json.loads(resolve("paper").with_suffix(".json").read_text())
    assert cfg["training"]["defense"] == "paper" and cfg["training"]["penalty"] > 0
    out = tmp_path / "paper.json"
    r = CliRunner().invoke(app, ["eval", str(synth_dir), "--model", "paper", "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["model_sha256"] == sha256_of(resolve("paper"))

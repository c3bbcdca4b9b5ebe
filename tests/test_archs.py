"""Bayar & Stamm's constrained CNN and MesoNet-4: training keeps the constraint, --init fine-tunes, and
`recapfast transfer --cross` gives the cross-architecture matrix."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from recapfast.models.archs import BayarCNN, MesoNet4, build
from recapfast.cli import app
from recapfast.models.zoo import load_detector


def constraint_error(model: BayarCNN) -> float:
    w = model.constrained.weight.detach()
    centre = (w[:, :, 2, 2] + 1).abs().max()
    others = (w.sum(dim=(2, 3)) - w[:, :, 2, 2] - 1).abs().max()
    return float(max(centre, others))


def test_shapes_and_constraint_projection():
    for model in (BayarCNN(), MesoNet4(), build("bayar", (2, 4, 4, 4, 8, 8))):
        for size in (32, 48, 64):
            assert model.eval()(torch.randint(0, 256, (2, 3, size, size)).float()).shape == (2, 2)
    torch.manual_seed(0)
    m = BayarCNN()
    assert constraint_error(m) < 1e-4
    with torch.no_grad():
        m.constrained.weight.normal_()
    assert constraint_error(m) > 0.1
    m.constrain_()
    assert constraint_error(m) < 1e-4
    with pytest.raises(ValueError, match="unknown architecture"):
        build("resnet")


def test_bundled_architectures_load():
    assert isinstance(load_detector("bayar"), BayarCNN) and isinstance(load_detector("meso4"), MesoNet4)
    assert constraint_error(load_detector("bayar")) < 1e-4


def train(tmp_path, data, name, *extra):
    out = tmp_path / f"{name}.safetensors"
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--iters", "6", "--val-every", "3",
                                 "--batch-size", "8", "--lr", "1e-3", "--size", "32", "--device", "cpu", "-q", *extra])
    assert r.exit_code == 0, r.output
    return out


def test_train_archs_keep_the_constraint_and_init_fine_tunes(tmp_path, synth_dir):
    bayar = train(tmp_path, synth_dir, "bayar", "--arch", "bayar", "--widths", "3,8,8,8,8,8")
    model = load_detector(str(bayar))
    assert isinstance(model, BayarCNN) and model.widths == (3, 8, 8, 8, 8, 8)
    assert constraint_error(model) < 1e-4             # re-projected after every optimizer step
    meso = train(tmp_path, synth_dir, "meso", "--arch", "meso4")
    assert isinstance(load_detector(str(meso)), MesoNet4)
    tuned = train(tmp_path, synth_dir, "tuned", "--init", str(bayar), "--robust", "--adv-count", "4")
    cfg = json.loads(tuned.with_suffix(".json").read_text())
    assert cfg["model"]["arch"] == "BayarCNN" and cfg["training"]["init"] == str(bayar)
    fine = load_detector(str(tuned))
    assert constraint_error(fine) < 1e-4
    start = load_detector(str(bayar))
    assert any(not torch.equal(a, b) for a, b in zip(fine.state_dict().values(), start.state_dict().values()))
    bundled = train(tmp_path, synth_dir, "from_bundled", "--init", "baseline")
    cfg = json.loads(bundled.with_suffix(".json").read_text())
    assert cfg["model"]["arch"] == "LaplacianCNN" and cfg["training"]["init"] == "baseline"
    r = CliRunner().invoke(app, ["train", str(synth_dir), "--out", str(tmp_path / "x.safetensors"), "--arch", "vgg",
                                 "-q"])
    assert r.exit_code == 1 and "--arch" in r.output


def test_cross_architecture_transfer_matrix(tmp_path, synth_dir):
    from recapfast.models.zoo import save_model

    paths = []
    for arch, seed in (("laplacian", 0), ("bayar", 1), ("meso4", 2)):
        torch.manual_seed(seed)
        paths.append(str(save_model(build(arch).eval(), tmp_path / f"{arch}.safetensors")))
    out = tmp_path / "cross.json"
    r = CliRunner().invoke(app, ["transfer", str(synth_dir), "--source", paths[0], "--target", ",".join(paths[1:]),
                                 "--cross", "--attack", "fgsm,apgd", "--eps", "2", "--apgd-steps", "2", "--size", "32",
                                 "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["models"] == paths and set(data["blocks"]) == set(paths)
    for src, block in data["blocks"].items():
        assert block["source"] == src and {c["model"] for c in block["cells"]} == set(paths)
    assert "Cross-model transfer matrix" in r.output and "APGD eps=2" in r.output
    # A non-LaplacianCNN source makes no data-free UAP by default; asking for one is a one-line error.
    r = CliRunner().invoke(app, ["transfer", str(synth_dir), "--source", paths[1], "--target", paths[0], "--attack",
                                 "fgsm", "--eps", "1", "--size", "32", "-q"])
    assert r.exit_code == 0 and "UAP xi=" not in r.output
    r = CliRunner().invoke(app, ["transfer", str(synth_dir), "--source", paths[1], "--target", paths[0], "--xi", "3",
                                 "--size", "32", "-q"])
    assert r.exit_code == 1 and "LaplacianCNN" in r.output

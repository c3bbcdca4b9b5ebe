"""save_checkpoint writes the weights, then the JSON: a crash at either point never loads a mismatched pair.

The crash is simulated by making the second (or the first) atomic write raise, as a kill or a full disk
would stop the process there; every loader must then refuse the pair, or load the consistent old one.
"""
from __future__ import annotations

import pytest
import torch

import recapfast as rf
from recapfast.models import checkpoint
from recapfast.io.checkpoint_check import CheckpointError, read_header
from recapfast.models.archs import build
from recapfast.models.zoo import load_detector, save_model

from conftest import make_model


def crash_on(monkeypatch, function: str) -> None:
    def die(path, *args, **kwargs):
        raise OSError(f"simulated crash writing {path}")

    monkeypatch.setattr(checkpoint.atomic, function, die)


def seeded(arch: str, seed: int):
    torch.manual_seed(seed)
    return build(arch).eval()


def same_weights(model, other) -> bool:
    a, b = model.state_dict(), other.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.mark.parametrize("old_arch,new_arch", [("laplacian", "laplacian"), ("bayar", "meso4"),
                                               ("laplacian", "bayar"), ("meso4", "laplacian")])
def test_crash_between_weights_and_config_never_loads_a_mismatched_pair(tmp_path, monkeypatch, old_arch, new_arch):
    path = tmp_path / "m.safetensors"
    old, new = seeded(old_arch, 0), seeded(new_arch, 1)
    save_model(old, path, {"note": "old"})
    with monkeypatch.context() as m:
        crash_on(m, "write_text")                 # the weights are replaced, the JSON write dies
        with pytest.raises(OSError, match="simulated crash"):
            save_model(new, path, {"note": "new"})
    assert '"note": "old"' in path.with_suffix(".json").read_text()      # the crash left the old JSON
    for load in (lambda: load_detector(str(path)), lambda: rf.load_model(path), lambda: checkpoint.read_config(path)):
        with pytest.raises(CheckpointError, match="do not fit together"):
            load()
    path.with_suffix(".json").unlink()            # the documented recovery: the weights carry their config
    assert same_weights(load_detector(str(path)), new)
    assert checkpoint.read_config(path)["note"] == "new"


@pytest.mark.parametrize("new_arch", ["laplacian", "bayar"])
def test_crash_before_the_weights_keeps_the_old_pair(tmp_path, monkeypatch, new_arch):
    path = tmp_path / "m.safetensors"
    old = seeded("meso4", 0)
    save_model(old, path)
    before = {p: p.read_bytes() for p in (path, path.with_suffix(".json"))}
    with monkeypatch.context() as m:
        crash_on(m, "write_file")
        with pytest.raises(OSError, match="simulated crash"):
            save_model(seeded(new_arch, 1), path)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]    # no temp file left
    assert same_weights(load_detector(str(path)), old)


@pytest.mark.parametrize("arch,name", [("laplacian", "LaplacianCNN"), ("bayar", "BayarCNN"), ("meso4", "MesoNet4")])
def test_header_names_the_saved_architecture(tmp_path, arch, name):
    """rf.save_checkpoint of any architecture records that architecture, not always LaplacianCNN."""
    path = rf.save_checkpoint(seeded(arch, 0), tmp_path / f"{arch}.safetensors")
    assert read_header(path)[1]["arch"] == name
    assert checkpoint.read_config(path)["model"]["arch"] == name
    assert same_weights(load_detector(str(path)), seeded(arch, 0))


def test_save_model_is_save_checkpoint(tmp_path):
    model = make_model()
    a = rf.save_checkpoint(model, tmp_path / "a.safetensors", {"x": 1})
    b = save_model(model, tmp_path / "b.safetensors", {"x": 1})
    assert read_header(a)[1] == read_header(b)[1]          # (safetensors orders the metadata keys freely)
    assert a.with_suffix(".json").read_bytes() == b.with_suffix(".json").read_bytes()

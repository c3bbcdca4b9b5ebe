"""`recapfast attack`: --resume after a crash, --full-size, iterative attacks, exit 1 when nothing is usable.

Issue 12: `attack` was resumable only by redoing everything, wrote only crops, knew only fgsm/llcm.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import recapfast as rf
import recapfast.engine.export as export_mod
from recapfast.attacks.iterative import run_attack
from recapfast.cli import app
from recapfast.data.folder import decode, to_patches

from screen_helpers import save_tiny_model, write_labelled

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("emodel") / "m.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_labelled(tmp_path_factory.mktemp("edata") / "data", 6, lambda i: (70 + 3 * i, 100 - 2 * i, 3),
                          seed=21, name="{:03d}.png")
    (root / "original" / "zz_broken.png").write_bytes(b"not an image")
    return root


def pngs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_resume_after_a_crash_equals_an_uninterrupted_run(model_path, data, tmp_path, monkeypatch):
    args = ["attack", data, "--model", model_path, "--size", 32, "--batch-size", 3, "--device", "cpu", "-q"]
    ref = tmp_path / "ref"
    assert run(*args, "--out", ref).exit_code == 0
    out = tmp_path / "out"
    real, count = export_mod.atomic.write_file, {"n": 0}

    def crash_after_five(path, *a, **k):
        if str(path).endswith(".png"):
            count["n"] += 1
            if count["n"] > 5:
                raise KeyboardInterrupt("killed")       # the run dies mid-batch
        return real(path, *a, **k)

    monkeypatch.setattr(export_mod.atomic, "write_file", crash_after_five)
    res = run(*args, "--out", out)
    assert res.exit_code != 0
    monkeypatch.setattr(export_mod.atomic, "write_file", real)
    logged = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()][1:]
    assert len(logged) == 3 and not (out / "manifest.json").exists()      # the first batch of 3 was logged
    res = run(*args, "--out", out)                                        # no --resume: refused, nothing lost
    assert res.exit_code == 1 and "--resume" in res.output
    res = run(*args, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert "3 already done" in res.output
    assert pngs(out) == pngs(ref)                                         # same files, same bytes
    got, want = json.loads((out / "manifest.json").read_text()), json.loads((ref / "manifest.json").read_text())
    assert got["files"] == want["files"] == 12 and got["written"] == want["written"]
    assert got["adversarial_accuracy"] == want["adversarial_accuracy"]
    assert [e["source"] for e in got["errors"]] == ["original/zz_broken.png"]
    sources = [json.loads(x).get("source") for x in (out / "manifest.jsonl").read_text().splitlines()[1:]]
    assert len(sources) == len(set(sources)) == 13                       # every file once, the broken one too
    res = run("attack", data, "--model", model_path, "--size", 32, "--out", out, "--resume", "--eps", 3, "-q")
    assert res.exit_code == 1 and "other settings (eps)" in res.output


def test_full_size_writes_the_whole_image_and_eval_tile_reproduces(model_path, data, tmp_path):
    out = tmp_path / "full"
    res = run("attack", data, "--out", out, "--full-size", "--size", 32, "--eps", 2, "--model", model_path,
              "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    src, _ = decode(data / "original" / "001.png")
    adv, _ = decode(out / "original" / "001.png")
    assert adv.shape == src.shape == (73, 98, 3)                          # whole image, not a 32x32 crop
    rows, cols = 73 // 32, 98 // 32
    assert np.array_equal(adv[rows * 32:, :], src[rows * 32:, :])         # outside the tile grid: unchanged
    assert np.array_equal(adv[:, cols * 32:], src[:, cols * 32:])
    diff = np.abs(adv[:rows * 32, :cols * 32].astype(int) - src[:rows * 32, :cols * 32].astype(int))
    assert diff.max() == 2 and (diff > 0).mean() > 0.9
    # The attacked tiles are exactly FGSM of the source tiles ...
    model = rf.load_model(model_path)
    x = to_patches(src, 32, tile=True)
    expect = rf.fgsm(model, x, torch.zeros(x.shape[0], dtype=torch.long), 2).to(torch.uint8)
    assert torch.equal(to_patches(adv, 32, tile=True), expect)
    # ... so `eval --tile` on the output reproduces the manifest's adversarial accuracy.
    res = run("eval", out, "--tile", "--size", 32, "--model", model_path, "--eps", 1, "--attack", "fgsm",
              "--json", tmp_path / "e.json", "-q", "--device", "cpu")
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["clean_accuracy"] == manifest["adversarial_accuracy"]
    assert manifest["patches"] == again["patches"]


@pytest.mark.parametrize("attack", ["bim", "illc", "pgd", "mifgsm"])
def test_iterative_attacks_match_the_library(model_path, data, tmp_path, attack):
    out = tmp_path / attack
    res = run("attack", data, "--out", out, "--attack", attack, "--eps", 3, "--size", 32, "--model", model_path,
              "--device", "cpu", "-q", "--batch-size", 64)
    assert res.exit_code == 0, res.output
    model = rf.load_model(model_path)
    files = sorted(p for p in data.rglob("*.png") if "broken" not in p.name)
    x = torch.cat([to_patches(decode(p)[0], 32) for p in files])
    y = torch.tensor([0 if p.parent.name == "original" else 1 for p in files])
    expect = run_attack(model, x, y, 3.0, attack).to(torch.uint8)
    got = torch.stack([torch.from_numpy(np.array(Image.open(out / p.relative_to(data)))).permute(2, 0, 1)
                       for p in files])
    assert torch.equal(got, expect)
    assert int((got.int() - x.int()).abs().max()) <= 3


def test_attack_exits_1_when_no_file_could_be_used(model_path, tmp_path):
    root = tmp_path / "bad"
    for label in ("original", "recaptured"):
        (root / label).mkdir(parents=True)
        (root / label / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = run("attack", root, "--out", tmp_path / "adv", "--model", model_path, "-q")
    lines = [x for x in res.output.splitlines() if x.startswith("recapfast: error")]
    assert res.exit_code == 1 and len(lines) == 1 and "no file could be used; 2 skipped" in lines[0], res.output
    assert json.loads((tmp_path / "adv" / "manifest.json").read_text())["files"] == 0

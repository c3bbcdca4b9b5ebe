"""The transfer matrix: white-box column equals the evaluator, target columns equal a direct computation."""
from __future__ import annotations

import json

import pytest
import torch

import recapfast as rf
from recapfast.engine.evaluate import evaluate_folder
from recapfast.attacks.iterative import iterative_attack
from recapfast.attacks.transfer import transfer_matrix
from recapfast.attacks.universal import load_patches

from conftest import make_model


def test_matrix_against_direct_computation(small_model, synth_dir):
    other = make_model(seed=3)
    models = {"a": small_model, "b": other}
    res = transfer_matrix(models, synth_dir, "a", ["b"], ("fgsm", "bim"), [2], xi=[3], size=32, batch_size=16,
                          uap_iterations=3)
    assert res.models == ["a", "b"] and res.patches == 48
    own = evaluate_folder(small_model, synth_dir, [2], ("fgsm", "bim"), size=32, batch_size=16)
    for name in ("fgsm", "bim"):
        assert res.cell(name, 2, "a").accuracy == own.cell(name, 2).accuracy
        assert res.cell(name, 2, "a").success_rate == pytest.approx(own.cell(name, 2).success_rate)
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)
    adv = torch.cat([iterative_attack(small_model, x[i:i + 16], y[i:i + 16], 2, "bim") for i in range(0, 48, 16)])
    with torch.no_grad():
        ok = other(adv).argmax(1) == y
        clean_ok = other(x.float()).argmax(1) == y
    cell = res.cell("bim", 2, "b")
    assert cell.accuracy == pytest.approx(float(ok.float().mean()))
    assert cell.success_rate == pytest.approx(float((clean_ok & ~ok).sum() / clean_ok.sum()))
    assert res.clean_accuracy["b"] == pytest.approx(float(clean_ok.float().mean()))
    assert 0 <= res.cell("uap", 3, "b").fooling_rate <= 1
    md = res.to_markdown()
    assert "Transfer matrix" in md and "| BIM eps=2 |" in md and "UAP xi=3" in md
    assert json.loads(res.to_json())["source"] == "a"


def test_cli_transfer(tmp_path, synth_dir, small_model):
    from typer.testing import CliRunner

    from recapfast.cli import app

    a = rf.save_checkpoint(small_model, tmp_path / "a.safetensors")
    b = rf.save_checkpoint(make_model(seed=2), tmp_path / "b.safetensors")
    out = tmp_path / "t.json"
    runner = CliRunner()
    r = runner.invoke(app, ["transfer", str(synth_dir), "--source", str(a), "--target", str(b), "--attack", "fgsm",
                            "--eps", "1", "--xi", "2", "--uap-iters", "2", "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert {c["model"] for c in data["cells"]} == {str(a), str(b)} and len(data["cells"]) == 4
    again = runner.invoke(app, ["transfer", str(synth_dir), "--source", str(a), "--target", str(b), "--json",
                                str(out), "-q"])
    assert again.exit_code == 1 and "--force" in again.output
    bad = runner.invoke(app, ["transfer", str(synth_dir), "--source", str(a), "--target", "nope.safetensors", "-q"])
    assert bad.exit_code == 1

"""`--attack auto`: fgsm + apgd + square per patch worst case, in eval's tables and JSON; apgd/square in attack."""
from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import recapfast as rf
from recapfast.cli import app
from recapfast.engine.evaluate import Evaluator
from recapfast.attacks.universal import load_patches


def test_eval_auto_worst_case_equals_direct_computation(tmp_path, synth_dir, small_model):
    ckpt = rf.save_checkpoint(small_model, tmp_path / "m.safetensors")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "auto", "--eps", "2,6",
                                 "--apgd-steps", "4", "--square-queries", "12", "--attack-seed", "3", "--size", "32",
                                 "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["attacks"] == ["fgsm", "apgd", "square"]
    assert data["attack_settings"] == {"apgd": {"steps": 4, "restarts": 1, "rho": 0.75, "seed": 3},
                                       "square": {"queries": 12, "restarts": 1, "p_init": 0.8, "seed": 3}}
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)           # one batch of 48 (default --batch-size 64)
    for cell in data["worst_case"]["cells"]:
        e = cell["eps"]
        advs = [rf.fgsm(small_model, x, y, e), rf.apgd(small_model, x, y, e, steps=4, seed=3),
                rf.square(small_model, x, y, e, queries=12, seed=3)]
        with torch.no_grad():
            ok = torch.stack([small_model(a).argmax(1) == y for a in advs])
        for name, row in zip(data["attacks"], ok):
            assert next(c for c in data["cells"] if c["attack"] == name and c["eps"] == e)["correct"] == int(row.sum())
        assert cell["correct"] == int(ok.all(0).sum())
    assert {c["check"] for c in data["masking"]["checks"]} == {
        "single_step_beats_iterative", "accuracy_rises_with_eps", "black_box_beats_white_box",
        "zero_or_nonfinite_gradients"}
    assert data["detection"]["clean"]["confusion"] is not None
    for needle in ("| WORST CASE |", "Gradient-masking checks", "ROC AUC", "APGD-CE 4 steps"):
        assert needle in r.output


def test_default_eval_gets_metrics_and_plain_evaluator_stays_plain(tmp_path, synth_dir, small_model):
    ckpt = rf.save_checkpoint(small_model, tmp_path / "m.safetensors")
    r = CliRunner().invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--eps", "1", "--size", "32", "-q"])
    assert r.exit_code == 0 and "Gradient-masking checks" in r.output and "ROC AUC" in r.output
    assert "| WORST CASE |" in r.output             # fgsm and llcm: two attacks
    ev = Evaluator(small_model, [1], ["fgsm"])      # train's validation: no extra work, no extra fields
    ev.update(load_patches(synth_dir, 32)[:4], torch.tensor([0, 0, 0, 0]))
    res = ev.result()
    assert ev.trust is None and res.masking is None and res.detection is None


def test_attack_command_writes_apgd_and_square_images(tmp_path, synth_dir, small_model):
    ckpt = rf.save_checkpoint(small_model, tmp_path / "m.safetensors")
    runner = CliRunner()
    for attack, extra in (("apgd", ["--apgd-steps", "3"]), ("square", ["--square-queries", "8"])):
        out = tmp_path / attack
        r = runner.invoke(app, ["attack", str(synth_dir), "--out", str(out), "--attack", attack, "--eps", "3",
                                "--model", str(ckpt), "--size", "32", *extra, "-q"])
        assert r.exit_code == 0, r.output
        manifest = json.loads((out / "manifest.json").read_text())
        again = tmp_path / f"{attack}.json"
        r = runner.invoke(app, ["eval", str(out), "--model", str(ckpt), "--attack", "fgsm", "--eps", "1", "--size",
                                "32", "--json", str(again), "-q"])
        assert r.exit_code == 0, r.output
        assert json.loads(again.read_text())["clean_accuracy"] == manifest["adversarial_accuracy"]

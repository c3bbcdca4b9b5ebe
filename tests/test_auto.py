"""`--attack auto`: fgsm + apgd + square per patch worst case, in eval's tables and JSON; apgd/square in attack."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import recapfast as rf
from recapfast.cli import app
from recapfast.engine.evaluate import Evaluator
from recapfast.attacks.iterative import iterative_attack
from recapfast.attacks.universal import load_patches


def _eval_json(tmp_path, synth_dir, ckpt, attack, eps, *extra, name="r.json"):
    out = tmp_path / name
    r = CliRunner().invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", attack, "--eps", eps,
                                 "--apgd-steps", "4", "--square-queries", "12", "--attack-seed", "3", "--size", "32",
                                 "--json", str(out), "-q", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text()), r.output


def test_eval_auto_is_a_cascade_equal_to_a_hand_count(tmp_path, synth_dir, small_model):
    """Issue 23: `auto` runs FGSM on every patch, APGD only where FGSM failed, Square only where both failed; a
    patch fooled at a smaller eps is fooled at every larger one.  The FGSM row is the stand-alone one; the APGD row
    (accuracy after FGSM then APGD) equals a hand cascade of stand-alone rf.fgsm / rf.apgd calls; the worst case is
    the Square row, never above any row, and the first-fooled-by table adds up."""
    ckpt = rf.save_checkpoint(small_model, tmp_path / "m.safetensors")
    data, output = _eval_json(tmp_path, synth_dir, ckpt, "auto", "2,1,6")
    assert data["attacks"] == ["fgsm", "apgd", "square"]
    assert data["attack_settings"]["apgd"] == {"steps": 4, "restarts": 1, "rho": 0.75, "seed": 3, "early_stop": True}
    assert data["attack_settings"]["square"] == {"queries": 12, "restarts": 1, "p_init": 0.8, "seed": 3}
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)           # one batch of 48 (default --batch-size 64)
    with torch.no_grad():
        clean_ok = small_model(x.float()).argmax(1) == y
    survived = clean_ok.clone()
    row = lambda name, e: next(c for c in data["cells"] if c["attack"] == name and c["eps"] == e)  # noqa: E731
    for e in (1.0, 2.0, 6.0):                       # ascending: what survives eps e was not fooled below it
        with torch.no_grad():
            fgsm_ok = small_model(rf.fgsm(small_model, x, y, e)).argmax(1) == y
            apgd_ok = small_model(rf.apgd(small_model, x, y, e, steps=4, seed=3)).argmax(1) == y
        assert row("fgsm", e)["correct"] == int(fgsm_ok.sum())
        survived &= fgsm_ok & apgd_ok
        assert row("apgd", e)["correct"] == int(survived.sum())
        worst = next(c for c in data["worst_case"]["cells"] if c["eps"] == e)
        assert worst["correct"] == row("square", e)["correct"] <= row("apgd", e)["correct"]
        assert worst["correct"] <= min(data["clean_correct"], row("fgsm", e)["correct"])
        first = next(f for f in data["worst_case"]["cascade"]["first_fooled_by"] if f["eps"] == e)
        assert first["robust"] == worst["correct"] and first["clean"] == 48 - data["clean_correct"]
        assert sum(first[k] for k in ("clean", "fgsm", "apgd", "square", "robust")) == 48
    cells = {c["eps"]: c["correct"] for c in data["worst_case"]["cells"]}
    assert cells[1.0] >= cells[2.0] >= cells[6.0]
    assert {c["check"] for c in data["masking"]["checks"]} == {
        "single_step_beats_iterative", "accuracy_rises_with_eps", "black_box_beats_white_box",
        "worst_case_rises_with_eps", "zero_or_nonfinite_gradients"}
    assert data["detection"]["clean"]["confusion"] is not None
    for needle in ("| WORST CASE |", "| FGSM > APGD |", "| FGSM > APGD > SQUARE |", "First fooled by",
                   "Gradient-masking checks", "ROC AUC", "APGD-CE 4 steps", "Multiplicity:"):
        assert needle in output


def test_worst_case_needs_the_clean_patch_right(tmp_path, synth_dir):
    """Issue 23: LLCM/ILLC push clean-misclassified patches back to the true class (two classes); the old worst
    case counted those as robust and rose above clean accuracy.  Now: correct clean AND under every attack."""
    small_model = rf.load_model("baseline")
    ckpt = rf.save_checkpoint(small_model, tmp_path / "m.safetensors")
    data, _ = _eval_json(tmp_path, synth_dir, ckpt, "llcm,illc", "1,3,8")
    old_definition_wrong = 0
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)
    with torch.no_grad():
        clean_ok = small_model(x.float()).argmax(1) == y
    assert int(clean_ok.sum()) < 48
    for cell in data["worst_case"]["cells"]:
        e = cell["eps"]
        with torch.no_grad():
            ok = [small_model(rf.llcm(small_model, x, y, e)).argmax(1) == y,
                  small_model(iterative_attack(small_model, x, y, e, "illc")).argmax(1) == y]
        assert cell["correct"] == int((clean_ok & ok[0] & ok[1]).sum())
        assert cell["correct"] <= data["clean_correct"]
        assert all(cell["correct"] <= c["correct"] for c in data["cells"] if c["eps"] == e)
        old_definition_wrong += int((~clean_ok & ok[0] & ok[1]).sum())
    assert old_definition_wrong > 0          # the case the old definition counted as robust


def test_a_one_class_model_is_flagged_degenerate(tmp_path, synth_dir, small_model):
    """Issue 23: a model that says 'original' for every patch scores clean 50%, FGSM 50%, success 0%: it looked
    perfectly robust.  The degenerate-model check flags it, and a working model passes."""
    import copy

    lazy = copy.deepcopy(small_model)
    with torch.no_grad():
        lazy.fc.bias.copy_(torch.tensor([100.0, -100.0]))
    ckpt = rf.save_checkpoint(lazy, tmp_path / "lazy.safetensors")
    data, output = _eval_json(tmp_path, synth_dir, ckpt, "fgsm", "1")
    d = data["masking"]["degenerate"]
    assert d["status"] == "flagged" and d["predicted_per_class"] == [48, 0]
    assert "**Degenerate model**" in output
    m = data["masking"]["multiplicity"]
    assert m["comparisons"] >= 1 and m["family_wise_threshold"] == pytest.approx(0.05 / m["comparisons"])
    ok = rf.save_checkpoint(rf.load_model("baseline"), tmp_path / "b.safetensors")
    data, _ = _eval_json(tmp_path, synth_dir, ok, "fgsm", "1", name="base-eval.json")
    assert data["masking"]["degenerate"]["status"] == "passed"


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

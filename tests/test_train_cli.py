"""recapfast train --defense / --activation / --val-attack-steps: what the checkpoint records, one-line errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from recapfast.cli import app
from recapfast.models.checkpoint import load_model

runner = CliRunner()
TINY = ["--widths", "4,4,8,8,8", "--batch-size", "8", "--quiet", "--device", "cpu"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_documents_the_defences_and_activations():
    text = " ".join(run("train", "--help").output.split())
    for word in ("--defense", "fast-at", "trades", "--activation", "softplus", "gelu", "--trades-beta",
                 "--trades-steps", "--trades-step-size", "--fast-at-step", "--val-attack", "--val-attack-steps",
                 "--val-eps", "--robust"):
        assert word in text, word


@pytest.mark.parametrize("args,words", [
    (["--defense", "madry"], "--defense 'madry'"),
    (["--activation", "tanh"], "--activation 'tanh'"),
    (["--defense", "trades", "--trades-beta", "-1"], "--trades-beta"),
    (["--defense", "trades", "--trades-steps", "0"], "--trades-steps"),
    (["--defense", "trades", "--trades-step-size", "0"], "--trades-step-size"),
    (["--defense", "fast-at", "--val-attack-steps", "0"], "--val-attack-steps"),
    (["--defense", "fast-at", "--fast-at-step", "nan"], "--fast-at-step"),
    (["--arch", "bayar", "--activation", "gelu"], "--activation is for --arch laplacian"),
    (["--robust", "--defense", "trades"], "--robust is --defense paper"),
    (["--defense", "fast-at", "--penalty", "1"], "--penalty is an option of --defense paper"),
    (["--defense", "fast-at", "--adv-count", "4"], "--adv-count is an option of --defense paper"),
    (["--trades-beta", "3"], "--trades-beta is an option of --defense trades"),
    (["--defense", "paper", "--fast-at-step", "1"], "--fast-at-step is an option of --defense fast-at"),
    (["--val-attack-steps", "5"], "the baseline keeps the best clean accuracy"),
    (["--val-eps", "1"], "--val-eps is for a --defense"),
    (["--defense", "fast-at", "--val-eps", "0.5"], "--val-eps 0.5: rounds to no change"),
    (["--defense", "fast-at", "--val-eps", "300"], "--val-eps"),
    (["--defense", "paper", "--val-attack", "pgd"], "--val-attack 'pgd'"),
    (["--defense", "paper", "--val-attack", "fgsm", "--val-attack-steps", "3"], "does not go with --val-attack fgsm"),
])
def test_bad_values_are_one_line_errors(args, words, synth_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    res = run("train", synth_dir, "--out", out, "--iters", 1, *TINY[2:], *args)      # default widths of each arch
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("recapfast: error")]
    assert len(lines) == 1 and words in " ".join(res.output.split()), res.output
    assert not out.exists()


def test_checkpoint_records_defence_activation_and_selection(synth_dir, tmp_path):
    out = tmp_path / "fa.safetensors"
    res = run("train", synth_dir, "--out", out, "--iters", 2, "--val-every", 2, *TINY, "--defense", "fast-at",
              "--activation", "softplus", "--val-attack-steps", 2)
    assert res.exit_code == 0, res.output
    assert "worst case (FGSM + APGD-2) eps 2" in res.output
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["training"]["defense"] == "fast-at" and cfg["training"]["robust"] is True
    assert cfg["training"]["activation"] == "softplus" and cfg["model"]["activation"] == "softplus"
    assert cfg["selection"]["attack"]["name"] == "apgd" and cfg["selection"]["attack"]["steps"] == 2
    assert {"apgd_eps2_accuracy", "worst_eps2_accuracy", "score"} <= set(cfg["metrics"])
    assert load_model(out).activation == "softplus"
    # --robust stays --defense paper; --init takes the checkpoint's activation unless --activation says otherwise
    paper = tmp_path / "paper.safetensors"
    res = run("train", synth_dir, "--out", paper, "--iters", 1, "--val-every", 1, *TINY[2:], "--robust",
              "--adv-count", 4, "--init", out, "--val-attack", "fgsm")
    assert res.exit_code == 0, res.output
    cfg = json.loads(paper.with_suffix(".json").read_text())
    assert cfg["training"]["defense"] == "paper" and cfg["model"]["activation"] == "softplus"
    assert "attack" not in cfg["selection"] and "FGSM" in cfg["selection"]["rule"]
    gelu = tmp_path / "gelu.safetensors"
    res = run("train", synth_dir, "--out", gelu, "--iters", 1, "--val-every", 1, *TINY[2:], "--defense", "trades",
              "--trades-steps", 1, "--trades-beta", 0.5, "--init", out, "--activation", "gelu", "--val-attack-steps", 1,
              "--val-eps", 1)
    assert res.exit_code == 0, res.output
    assert "worst case (FGSM + APGD-1) eps 1" in " ".join(res.output.split())
    cfg = json.loads(gelu.with_suffix(".json").read_text())
    assert cfg["model"]["activation"] == "gelu" and cfg["training"]["trades_beta"] == 0.5
    assert cfg["training"]["val_eps"] == 1 and cfg["selection"]["attack"]["eps"] == 1
    assert {"worst_eps1_accuracy", "worst_eps1_accuracy_per_class"} <= set(cfg["metrics"])

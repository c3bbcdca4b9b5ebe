"""The transfer matrix: white-box column equals the evaluator, target columns equal a direct computation."""
from __future__ import annotations

import json

import pytest
import torch

import recapfast as rf
from recapfast.engine.evaluate import evaluate_folder
from recapfast.attacks.iterative import iterative_attack
from recapfast.engine.transfer import transfer_matrix
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


def per_eps_transfer_counts(models, root, source, attacks, eps, size, batch_size):
    """The plain reference: every (attack, eps) crafted on its own (a fresh gradient each), counts read per batch."""
    from recapfast.data.folder import PatchDataset, discover, make_loader
    from recapfast.engine.trust import run_any_attack

    names = list(models)
    correct = {(a, e, m): 0 for a in attacks for e in eps for m in names}
    flipped, fooled = dict(correct), dict(correct)
    clean, total = {m: 0 for m in names}, 0
    for batch in make_loader(PatchDataset(discover(root), size), batch_size, 0):
        x, y = batch.x, batch.y
        total += x.shape[0]
        for a in attacks:
            for e in eps:
                adv = run_any_attack(models[source], x, y, e, a, True)
                for m in names:
                    with torch.inference_mode():
                        clean_pred = models[m](x.float()).argmax(1)
                        pred = models[m](adv).argmax(1)
                    correct[a, e, m] += int((pred == y).sum())
                    flipped[a, e, m] += int(((clean_pred == y) & (pred != y)).sum())
                    fooled[a, e, m] += int((pred != clean_pred).sum())
        for m in names:
            with torch.inference_mode():
                clean[m] += int((models[m](x.float()).argmax(1) == y).sum())
    return total, clean, correct, flipped, fooled


def test_shared_gradient_matrix_equals_per_eps_loop(synth_dir):
    """fgsm/llcm share one gradient per batch for all eps: every number equals crafting each eps on its own."""
    from recapfast.models.zoo import load_detector

    # trained detectors (random ones predict one class whatever the input, which would make this vacuous)
    models = {"a": rf.load_model("baseline"), "b": rf.load_model("robust"), "c": load_detector("bayar")}
    eps = [1.0, 2.0, 3.5, 5.0]
    attacks = ("fgsm", "llcm", "bim")
    res = transfer_matrix(models, synth_dir, "a", ["b", "c"], attacks, eps, xi=(), size=64, batch_size=20)
    total, clean, correct, flipped, fooled = per_eps_transfer_counts(models, synth_dir, "a", attacks, eps, 64, 20)
    assert res.patches == total == 48
    for m in models:
        assert res.clean_accuracy[m] == clean[m] / total
        for a in attacks:
            for e in eps:
                cell = res.cell(a, e, m)
                assert (cell.accuracy, cell.success_rate, cell.fooling_rate) == \
                    (correct[a, e, m] / total, flipped[a, e, m] / clean[m], fooled[a, e, m] / total), (a, e, m)
    # not a vacuous comparison: the attacks do change predictions, differently per eps
    assert len({res.cell(a, e, m).fooling_rate for a in attacks for e in eps for m in models}) > 5


def test_transfer_reads_no_device_value_per_batch(small_model, synth_dir, monkeypatch):
    """Counts stay on the device until the end: transfer_matrix reads no tensor value inside the batch loop."""
    import sys

    from recapfast.engine import transfer as transfer_mod

    batches, reads = [], []

    def wrap(name, original):
        def read(t, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename == transfer_mod.__file__:
                reads.append((len(batches), name))
            return original(t, *args, **kwargs)
        return read

    for name in ("item", "tolist", "__int__", "__float__", "__bool__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    res = transfer_mod.transfer_matrix({"a": small_model, "b": make_model(seed=3)}, synth_dir, "a", ["b"], ("fgsm",),
                                       [1, 2], xi=(), size=32, batch_size=16, progress=batches.append)
    assert len(batches) == 3 and res.patches == 48
    assert reads and {n for n, _ in reads} == {3}           # every read after the last batch

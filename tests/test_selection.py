"""Checkpoint selection: robust defences keep the checkpoint of the best mean of the weakest class's clean and
worst-case (FGSM + APGD) validation accuracy, the baseline the best clean accuracy; the numbers are what the attacks
give, computed by hand."""
from __future__ import annotations

import json

import pytest
import torch

from recapfast.attacks.apgd import APGDConfig, apgd_rows
from recapfast.attacks.single_step import fgsm
from recapfast.data.folder import DataError, PatchDataset, discover, make_loader
from recapfast.models.checkpoint import load_model
from recapfast.training import selection
from recapfast.training import train as train_mod
from recapfast.training.train import TrainConfig, train

TINY = (4, 4, 8, 8, 8)
EPS = 1.0


def test_validation_numbers_are_the_attacks_by_hand(synth_dir):
    model = load_model("robust")          # at eps 1 on these patches: FGSM flips some, APGD more
    loader = make_loader(PatchDataset(discover(synth_dir), 32), 20, 0)
    cfg = TrainConfig(defense="fast-at", val_eps=EPS, val_attack_steps=3)
    m = selection.validate(model, loader, cfg)
    clean = fg = ap = worst = n = 0
    clean_c, worst_c, n_c = [0, 0], [0, 0], [0, 0]
    labels, log_odds, predicted = [], [], set()
    for b in loader:
        x, y = b.x, b.y
        with torch.no_grad():
            logits = model(x.float())
            ok = logits.argmax(1) == y
            fg_ok = model(fgsm(model, x, y, EPS)).argmax(1) == y
        labels += y.tolist()
        log_odds += (logits[:, 1] - logits[:, 0]).tolist()
        predicted |= set(logits.argmax(1).tolist())
        board = apgd_rows(model, x, y, [EPS], APGDConfig(steps=3, seed=0))
        with torch.no_grad():
            ap_ok = model(board.out).argmax(1) == y
        clean, fg, ap = clean + int(ok.sum()), fg + int(fg_ok.sum()), ap + int(ap_ok.sum())
        worst += int((ok & fg_ok & ap_ok).sum())
        n += len(y)
        for c in (0, 1):
            n_c[c] += int((y == c).sum())
            clean_c[c] += int((ok & (y == c)).sum())
            worst_c[c] += int((ok & fg_ok & ap_ok & (y == c)).sum())
    assert m["patches"] == n == 48
    e = f"eps{EPS:g}"
    assert (m["clean_accuracy"], m[f"fgsm_{e}_accuracy"], m[f"apgd_{e}_accuracy"], m[f"worst_{e}_accuracy"]) == \
        (clean / n, fg / n, ap / n, worst / n)
    from sklearn.metrics import roc_auc_score

    degenerate = len(predicted) == 1 or abs(roc_auc_score(labels, log_odds) - 0.5) <= 0.05
    assert m["degenerate"] is degenerate               # here True: clean AUC near chance on these patches
    assert m["clean_accuracy_per_class"] == [clean_c[c] / n_c[c] for c in (0, 1)]
    assert m[f"worst_{e}_accuracy_per_class"] == [worst_c[c] / n_c[c] for c in (0, 1)]
    weakest = 0.5 * (min(clean_c[c] / n_c[c] for c in (0, 1)) + min(worst_c[c] / n_c[c] for c in (0, 1)))
    assert m["score"] == weakest - (1.0 if degenerate else 0.0)
    assert 0 < worst < fg < clean, "the check needs patches that survive and patches only APGD flips"
    base = selection.validate(model, loader, TrainConfig())           # baseline: clean, no APGD run
    assert "apgd_eps2_accuracy" not in base and base["score"] == clean / n
    paper_fgsm = selection.validate(model, loader, TrainConfig(robust=True, val_attack="fgsm", val_eps=EPS))
    assert paper_fgsm["score"] == 0.5 * (clean + fg) / n


def test_a_one_class_model_ranks_below_every_other(synth_dir):
    """A model that says "original" for every patch survives every attack on the originals: worst case 50%, a patch
    average of 0.5, above a real model's typical score; per class its recaptures are all wrong (weakest class 0), and
    it is flagged degenerate: it scores 0 - 1."""
    model = load_model("robust")
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([1e4, -1e4]))
    loader = make_loader(PatchDataset(discover(synth_dir), 32), 20, 0)
    m = selection.validate(model, loader, TrainConfig(defense="trades", val_attack_steps=2))
    assert m["clean_accuracy"] == m["worst_eps2_accuracy"] == 0.5 and m["degenerate"] is True
    assert m["clean_accuracy_per_class"] == m["worst_eps2_accuracy_per_class"] == [1.0, 0.0]
    assert m["score"] == 0.0 - 1.0


# Scripted validations (iteration -> metrics, per class [originals, recaptures]): clean is best at 2, clean + FGSM at
# 4, the weakest class's clean + worst case at 6; 8 has the best patch average of clean and worst case (.55) but one
# class mostly wrong (the drift to one answer the per-class rule exists for); 10 answers one class everywhere.
def _val(clean, fgsm, apgd, worst, clean_pc, worst_pc, **more):
    return dict(clean_accuracy=clean, fgsm_eps2_accuracy=fgsm, apgd_eps2_accuracy=apgd, worst_eps2_accuracy=worst,
                clean_accuracy_per_class=clean_pc, worst_eps2_accuracy_per_class=worst_pc, **more)


SCRIPT = {2: _val(0.90, 0.10, 0.05, 0.05, [0.90, 0.90], [0.05, 0.05]),
          4: _val(0.80, 0.70, 0.10, 0.10, [0.80, 0.80], [0.10, 0.10]),
          6: _val(0.70, 0.40, 0.35, 0.30, [0.68, 0.72], [0.28, 0.32]),
          8: _val(0.60, 0.50, 0.50, 0.50, [0.25, 0.95], [0.20, 0.80]),
          10: _val(0.50, 0.50, 0.50, 0.50, [1.0, 0.0], [1.0, 0.0], degenerate=True)}


@pytest.mark.parametrize("settings,expected", [
    (dict(defense="fast-at"), 6),     # weakest class: .475 .45 .48 .225 -1 -> 6 (patch average: .475 .45 .50 .55 -.5)
    (dict(defense="trades"), 6),
    (dict(robust=True, adv_count=4), 6),               # --robust is --defense paper: the strong criterion too
    (dict(robust=True, adv_count=4, val_attack="fgsm"), 4),   # mean(clean, FGSM): .50 .75 .55 .55 .50 -> 4
    (dict(), 2),                                       # baseline: clean .90 .80 .70 .60 .50 -> 2
])
def test_the_kept_checkpoint_is_the_hand_computed_best(settings, expected, synth_dir, tmp_path, monkeypatch):
    weights, calls = {}, []

    def scripted(model, loader, config):
        step = 2 * (len(calls) + 1)
        calls.append(step)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = dict(SCRIPT[step], patches=10)
        metrics["score"] = selection.score(metrics, config)
        return metrics

    monkeypatch.setattr(train_mod, "validate", scripted)
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(iters=10, val_every=2, batch_size=8, lr=1e-2, seed=0, widths=TINY, trades_steps=1,
                      **settings)
    res = train(synth_dir, out, cfg, log=lambda m: None)
    assert calls == [2, 4, 6, 8, 10] and res.best["iteration"] == expected
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["metrics"]["iteration"] == expected and saved["training"]["defense"] == cfg.defense
    assert saved["selection"] == selection.criterion(cfg)
    kept = load_model(out).state_dict()
    assert all(torch.equal(kept[k], weights[expected][k]) for k in kept)
    assert not all(torch.equal(kept[k], weights[10][k]) for k in kept)       # not simply the last one


def test_resume_refuses_a_best_kept_by_the_earlier_rule(synth_dir, tmp_path, monkeypatch):
    """A resume state whose best validation has no per-class numbers was kept by the patch-average rule: its score
    is not comparable with today's, so --resume says so instead of mixing the two rules in one run."""
    def scripted(model, loader, config):
        metrics = dict(SCRIPT[6], patches=10)
        metrics["score"] = selection.score(metrics, config)
        return metrics

    monkeypatch.setattr(train_mod, "validate", scripted)
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(iters=2, val_every=2, batch_size=8, lr=1e-2, seed=0, widths=TINY, defense="fast-at")
    train(synth_dir, out, cfg, log=lambda m: None)
    state_file = train_mod.resume_path(out)
    state = torch.load(state_file, weights_only=True)
    state["best"] = {k: v for k, v in state["best"].items() if not k.endswith("_per_class")}   # as the old rule saved
    torch.save(state, state_file)
    with pytest.raises(DataError, match="earlier selection rule"):
        train(synth_dir, out, TrainConfig(**{**cfg.__dict__, "iters": 4}), resume=True, log=lambda m: None)
    fgsm_rule = TrainConfig(iters=2, val_every=2, batch_size=8, lr=1e-2, seed=0, widths=TINY, robust=True,
                            adv_count=4, val_attack="fgsm")         # the FGSM rule did not change: resumes
    train(synth_dir, tmp_path / "f.safetensors", fgsm_rule, log=lambda m: None)
    res = train(synth_dir, tmp_path / "f.safetensors", TrainConfig(**{**fgsm_rule.__dict__, "iters": 4}),
                resume=True, log=lambda m: None)
    assert res.iterations == 4

"""Checkpoint selection: robust defences keep the checkpoint of the best mean of clean and worst-case (FGSM + APGD)
validation accuracy, the baseline the best clean accuracy; the numbers are what the attacks give, computed by hand."""
from __future__ import annotations

import json

import pytest
import torch

from recapfast.attacks.apgd import APGDConfig, apgd_rows
from recapfast.attacks.single_step import fgsm
from recapfast.data.folder import PatchDataset, discover, make_loader
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
    assert m["patches"] == n == 48
    e = f"eps{EPS:g}"
    assert (m["clean_accuracy"], m[f"fgsm_{e}_accuracy"], m[f"apgd_{e}_accuracy"], m[f"worst_{e}_accuracy"]) == \
        (clean / n, fg / n, ap / n, worst / n)
    from sklearn.metrics import roc_auc_score

    degenerate = len(predicted) == 1 or abs(roc_auc_score(labels, log_odds) - 0.5) <= 0.05
    assert m["degenerate"] is degenerate               # here True: clean AUC near chance on these patches
    assert m["score"] == 0.5 * (clean + worst) / n - (1.0 if degenerate else 0.0)
    assert 0 < worst < fg < clean, "the check needs patches that survive and patches only APGD flips"
    base = selection.validate(model, loader, TrainConfig())           # baseline: clean, no APGD run
    assert "apgd_eps2_accuracy" not in base and base["score"] == clean / n
    paper_fgsm = selection.validate(model, loader, TrainConfig(robust=True, val_attack="fgsm", val_eps=EPS))
    assert paper_fgsm["score"] == 0.5 * (clean + fg) / n


def test_a_one_class_model_ranks_below_every_other(synth_dir):
    """A model that says "original" for every patch survives every attack on the originals: worst case 50%, mean 0.5,
    above a real model's typical score; it is flagged degenerate and scores mean - 1."""
    model = load_model("robust")
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([1e4, -1e4]))
    loader = make_loader(PatchDataset(discover(synth_dir), 32), 20, 0)
    m = selection.validate(model, loader, TrainConfig(defense="trades", val_attack_steps=2))
    assert m["clean_accuracy"] == m["worst_eps2_accuracy"] == 0.5 and m["degenerate"] is True
    assert m["score"] == 0.5 - 1.0


# Scripted validations (iteration -> metrics): clean is best at 2, clean + FGSM at 4, clean + worst case at 6.
SCRIPT = {2: dict(clean_accuracy=0.90, fgsm_eps2_accuracy=0.10, apgd_eps2_accuracy=0.05, worst_eps2_accuracy=0.05),
          4: dict(clean_accuracy=0.80, fgsm_eps2_accuracy=0.70, apgd_eps2_accuracy=0.10, worst_eps2_accuracy=0.10),
          6: dict(clean_accuracy=0.70, fgsm_eps2_accuracy=0.40, apgd_eps2_accuracy=0.35, worst_eps2_accuracy=0.30),
          8: dict(clean_accuracy=0.75, fgsm_eps2_accuracy=0.30, apgd_eps2_accuracy=0.25, worst_eps2_accuracy=0.25),
          # one class everywhere: the best mean of all (.5), flagged degenerate, never kept by the APGD rule
          10: dict(clean_accuracy=0.50, fgsm_eps2_accuracy=0.50, apgd_eps2_accuracy=0.50, worst_eps2_accuracy=0.50,
                   degenerate=True)}


@pytest.mark.parametrize("settings,expected", [
    (dict(defense="fast-at"), 6),                      # mean(clean, worst): .475 .45 .50 .50 (-.5) -> 6 (by hand)
    (dict(defense="trades"), 6),
    (dict(robust=True, adv_count=4), 6),               # --robust is --defense paper: the strong criterion too
    (dict(robust=True, adv_count=4, val_attack="fgsm"), 4),   # mean(clean, FGSM): .50 .75 .55 .525 .50 -> 4
    (dict(), 2),                                       # baseline: clean .90 .80 .70 .75 .50 -> 2
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

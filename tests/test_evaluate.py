"""The evaluation engine's counters against a direct computation, and its renderings."""
from __future__ import annotations

import csv
import io
import json

import torch

import recapfast as rf
from recapfast.engine.evaluate import Evaluator, evaluate_folder


def test_evaluator_counts_match_a_direct_computation(small_model, op_backend):
    g = torch.Generator().manual_seed(8)
    xs = torch.randint(0, 256, (3, 10, 3, 32, 32), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 2, (3, 10), generator=g)
    eps = [1, 3]
    ev = Evaluator(small_model, eps, ("fgsm", "llcm"))
    for x, y in zip(xs, ys):
        ev.update(x, y)
    res = ev.result("m", files=30)
    x, y = xs.reshape(-1, 3, 32, 32), ys.reshape(-1)
    with torch.no_grad():
        clean_ok = small_model(x.float()).argmax(1) == y
    assert res.patches == 30 and res.patches_per_class == [int((y == 0).sum()), int((y == 1).sum())]
    assert res.clean_correct == int(clean_ok.sum())
    assert res.clean_accuracy == int(clean_ok.sum()) / 30
    for name, fn in (("fgsm", rf.fgsm), ("llcm", rf.llcm)):
        for e in eps:
            adv = torch.cat([fn(small_model, xb, yb, e) for xb, yb in zip(xs, ys)])
            with torch.no_grad():
                adv_ok = small_model(adv).argmax(1) == y
            cell = res.cell(name, e)
            assert cell.correct == int(adv_ok.sum())
            assert cell.flipped == int((clean_ok & ~adv_ok).sum())
            assert abs(cell.success_rate - cell.flipped / res.clean_correct) < 1e-12
            delta = (adv - x.float()).flatten(1)
            assert abs(cell.mean_linf - delta.abs().amax(1).mean().item()) < 1e-6
            assert abs(cell.mean_l2 - delta.norm(dim=1).mean().item()) < 1e-3
            mse = delta.square().mean(1).double()
            psnr = (10 * torch.log10(255.0 ** 2 / mse[mse > 0])).mean().item()
            assert abs(cell.mean_psnr - psnr) < 1e-6


def test_renderings_carry_the_same_numbers(small_model, synth_dir, op_backend):
    res = evaluate_folder(small_model, synth_dir, [1, 2], ("fgsm", "llcm"), size=64, batch_size=16,
                          model_name="tiny")
    assert res.files == 48 and res.patches == 48 and not res.errors
    md = res.to_markdown()
    assert "Clean accuracy:" in md and "| FGSM |" in md and "| LLCM |" in md
    assert f"{100 * res.cell('fgsm', 2).accuracy:.1f}%" in md
    data = json.loads(res.to_json())
    assert data["clean_accuracy"] == res.clean_accuracy
    assert [c["accuracy"] for c in data["cells"]] == [c.accuracy for c in res.cells]
    rows = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert rows[0]["attack"] == "clean" and float(rows[0]["accuracy"]) == res.clean_accuracy
    assert [(r["attack"], float(r["eps"])) for r in rows[1:]] == [(c.attack, c.eps) for c in res.cells]
    assert [float(r["accuracy"]) for r in rows[1:]] == [c.accuracy for c in res.cells]


def test_tiles_count_every_patch(small_model, synth_dir, op_backend):
    res = evaluate_folder(small_model, synth_dir, [1], ("fgsm",), size=32, tile=True, batch_size=8)
    assert res.files == 48 and res.patches == 4 * 48

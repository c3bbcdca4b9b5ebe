"""Iterative attacks (BIM, ILLC, PGD, MI-FGSM) against plain reference loops, and their eval integration."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import recapfast as rf
from recapfast.engine.evaluate import Evaluator
from recapfast.attacks.iterative import ITERATIVE_ATTACKS, default_steps, iterative_attack, sweep_iterative


def reference_loop(model, x, y, eps, attack, steps, alpha, seed=0, mu=1.0, random_start=True):
    """Textbook loops written out in full: step, project to the eps box and [0, 255], round to the grid."""
    model.eval()
    x0 = x.float()
    lo = torch.ceil(torch.clamp(x0 - eps, min=0))
    hi = torch.floor(torch.clamp(x0 + eps, max=255))
    if attack == "illc":
        with torch.no_grad():
            target = model(x0).argmin(1)
    else:
        target = y
    adv = x0.clone()
    if attack == "pgd" and random_start:
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(x0.shape, generator=g) * (2 * eps) - eps
        adv = torch.min(torch.max(torch.round(x0 + u), lo), hi)
    g_acc = torch.zeros_like(x0)
    for _ in range(steps):
        a = adv.clone().requires_grad_(True)
        loss = F.cross_entropy(model(a), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, a)
        if attack == "mifgsm":
            norm = grad.abs().sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
            g_acc = mu * g_acc + grad / norm
            grad = g_acc
        direction = -1.0 if attack == "illc" else 1.0
        adv = torch.min(torch.max(torch.round(adv + direction * alpha * torch.sign(grad)), lo), hi).detach()
    return adv


@pytest.mark.parametrize("attack", ITERATIVE_ATTACKS)
@pytest.mark.parametrize("eps,steps,alpha", [(3, 4, 1.0), (5, 3, 2.0)])
def test_equals_reference_loop_bit_for_bit(small_model, batch, attack, eps, steps, alpha):
    x, y = batch
    got = iterative_attack(small_model, x, y, eps, attack, steps=steps, step_size=alpha, seed=7)
    want = reference_loop(small_model, x, y, eps, attack, steps, alpha, seed=7)
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("attack", ITERATIVE_ATTACKS)
@pytest.mark.parametrize("eps", [1, 2.5, 4])
def test_within_eps_on_grid_and_in_range(small_model, attack, eps):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8, generator=g)
    x[:, :, :4] = 0          # saturated pixels: the box is clipped to [0, 255]
    x[:, :, -4:] = 255
    y = torch.randint(0, 2, (6,), generator=g)
    adv = iterative_attack(small_model, x, y, eps, attack, steps=6, step_size=1.5)
    delta = adv - x.float()
    assert delta.abs().max() <= eps
    assert torch.equal(adv, adv.round()) and adv.min() >= 0 and adv.max() <= 255


def test_not_quantized_stays_in_box(small_model, batch):
    x, y = batch
    adv = iterative_attack(small_model, x, y, 2.5, "bim", steps=5, step_size=0.7, quantize=False)
    assert (adv - x.float()).abs().max() <= 2.5 + 1e-5 and not torch.equal(adv, adv.round())


def test_pgd_one_step_without_random_start_is_fgsm(small_model, batch):
    x, y = batch
    for eps in (1, 3, 5):
        pgd = iterative_attack(small_model, x, y, eps, "pgd", steps=1, step_size=eps, random_start=False)
        assert torch.equal(pgd, rf.fgsm(small_model, x, y, eps))


def test_bim_one_unit_step_is_fgsm_and_illc_is_llcm(small_model, batch):
    x, y = batch
    assert torch.equal(iterative_attack(small_model, x, y, 1, "bim"), rf.fgsm(small_model, x, y, 1))
    assert torch.equal(iterative_attack(small_model, x, y, 1, "illc"), rf.llcm(small_model, x, y, 1))


def test_pgd_random_start_is_seeded(small_model, batch):
    x, y = batch
    a = iterative_attack(small_model, x, y, 4, "pgd", seed=1)
    assert torch.equal(a, iterative_attack(small_model, x, y, 4, "pgd", seed=1))
    assert not torch.equal(a, iterative_attack(small_model, x, y, 4, "pgd", seed=2))


def test_kurakin_default_steps():
    assert [default_steps(e) for e in (1, 2, 3, 4, 5, 8, 16)] == [1, 2, 3, 5, 6, 10, 20]


def test_params_and_batchnorm_untouched_and_mode_restored(small_model, batch):
    x, y = batch
    small_model.train()
    stats = {k: v.clone() for k, v in small_model.state_dict().items()}
    for attack in ITERATIVE_ATTACKS:
        iterative_attack(small_model, x, y, 2, attack, steps=2)
    assert small_model.training
    assert all(p.grad is None for p in small_model.parameters())
    assert all(torch.equal(v, stats[k]) for k, v in small_model.state_dict().items())


def test_bad_arguments(small_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="unknown iterative attack"):
        iterative_attack(small_model, x, y, 2, "cw")
    with pytest.raises(ValueError, match="step size"):
        iterative_attack(small_model, x, y, 2, "bim", step_size=0.25)
    with pytest.raises(ValueError, match="true labels"):
        iterative_attack(small_model, x, None, 2, "pgd")
    assert iterative_attack(small_model, x[:0], y[:0], 2, "bim").shape == (0, 3, 32, 32)


def test_sweep_iterative_matches_single_calls(small_model, batch):
    x, y = batch
    res = sweep_iterative(small_model, x, y, [1, 3], ("bim", "mifgsm"), return_images=True)
    for name in ("bim", "mifgsm"):
        for j, e in enumerate([1, 3]):
            adv = iterative_attack(small_model, x, y, e, name)
            assert torch.equal(res.images[name][j].float(), adv)
            with torch.no_grad():
                assert torch.equal(res.predictions[name][j], small_model(adv).argmax(1))
            assert torch.allclose(res.linf[name][j], (adv - x.float()).flatten(1).abs().amax(1))


def test_evaluator_counts_iterative_attacks(small_model):
    g = torch.Generator().manual_seed(8)
    xs = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 2, (2, 8), generator=g)
    ev = Evaluator(small_model, [1, 2], ("fgsm", "bim", "pgd"))
    for x, y in zip(xs, ys):
        ev.update(x, y)
    res = ev.result("m")
    x, y = xs.reshape(-1, 3, 32, 32), ys.reshape(-1)
    with torch.no_grad():
        clean_ok = small_model(x.float()).argmax(1) == y
    for name in ("bim", "pgd"):
        for e in (1, 2):
            adv = torch.cat([iterative_attack(small_model, xb, yb, e, name) for xb, yb in zip(xs, ys)])
            with torch.no_grad():
                adv_ok = small_model(adv).argmax(1) == y
            cell = res.cell(name, e)
            assert cell.correct == int(adv_ok.sum()) and cell.flipped == int((clean_ok & ~adv_ok).sum())
            assert cell.mean_linf <= e and 0 < cell.mean_ssim <= 1
    assert res.iterative["steps"] == {"1": 1, "2": 2} and res.iterative["step_size"] == 1.0
    assert "Iterative attacks (run per eps)" in res.to_markdown() and "| BIM |" in res.to_markdown()


def test_cli_eval_with_iterative_attacks(tmp_path, synth_dir, small_model):
    from typer.testing import CliRunner

    from recapfast.cli import app

    ckpt = rf.save_checkpoint(small_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "r.json"
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "fgsm,bim,illc,pgd,mifgsm",
                            "--eps", "1,2", "--steps", "2", "--step-size", "1", "--size", "32", "--json", str(out),
                            "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [c["attack"] for c in data["cells"]] == ["fgsm"] * 2 + ["bim"] * 2 + ["illc"] * 2 + ["pgd"] * 2 + \
        ["mifgsm"] * 2
    assert all(c["mean_linf"] <= c["eps"] and not math.isnan(c["mean_ssim"]) for c in data["cells"])
    bad = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "cw", "-q"])
    assert bad.exit_code == 1
    bad = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "bim", "--step-size", "0.2"])
    assert bad.exit_code == 1 and "--step-size" in bad.output

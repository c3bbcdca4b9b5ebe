"""Universal perturbations: xi bound, integer grid, PNG round trip, eval --uap, and the bundled-model check."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import recapfast as rf
from recapfast.models.checkpoint import resolve
from recapfast.engine.evaluate import Evaluator
from recapfast.attacks.universal import (UAP, UAPError, apply_uap, data_driven_uap, data_free_uap, fit, fooling_rate, load_patches,
                           load_uap, random_sign_uap, save_uap)


@pytest.mark.parametrize("xi", [2, 2.5, 5])
def test_data_free_uap_respects_xi_and_grid(small_model, xi):
    u = data_free_uap(small_model, xi, size=32, iterations=8, batch=4)
    assert u.delta.dtype == torch.int16 and u.delta.shape == (3, 32, 32)
    assert int(u.delta.abs().max()) <= xi
    # The objective (sum of log mean activations) is what the ascent improves.
    assert max(u.history) >= u.history[0] and len(u.history) == 9


def test_data_free_uap_is_reproducible_and_untouching(small_model):
    state = {k: v.clone() for k, v in small_model.state_dict().items()}
    a = data_free_uap(small_model, 3, size=16, iterations=4, batch=2, seed=5)
    b = data_free_uap(small_model, 3, size=16, iterations=4, batch=2, seed=5)
    assert torch.equal(a.delta, b.delta)
    assert all(p.grad is None for p in small_model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in small_model.state_dict().items())


def test_data_driven_uap_respects_xi(small_model, synth_dir):
    patches = load_patches(synth_dir, 32, limit=16)
    assert patches.shape == (16, 3, 32, 32) and patches.dtype == torch.uint8
    u = data_driven_uap(small_model, patches, 4, iterations=3, batch=8)
    assert int(u.delta.abs().max()) <= 4 and u.method == "data-driven"
    assert fooling_rate(small_model, patches, u.delta) == max(u.history)


def test_fit_and_apply():
    d = torch.arange(3 * 4 * 6, dtype=torch.int16).reshape(3, 4, 6) % 11 - 5
    assert torch.equal(fit(d, 4, 6), d)
    big = fit(d, 8, 12)
    assert big.shape == (3, 8, 12) and torch.equal(big[:, :4, :6], d) and torch.equal(big[:, 4:, 6:], d)
    assert torch.equal(fit(d, 2, 2), d[:, 1:3, 2:4])
    x = torch.tensor([0, 3, 250, 255], dtype=torch.uint8).repeat(3, 2, 1).reshape(1, 3, 2, 4)
    xu = apply_uap(x, torch.full((3, 2, 4), 5, dtype=torch.int16))
    assert xu.tolist()[0][0][0] == [5.0, 8.0, 255.0, 255.0]
    assert torch.equal(xu, xu.round())


def test_png_round_trip_and_metadata(tmp_path):
    u = random_sign_uap(7, size=16, seed=2)
    u.model = "baseline"
    path = save_uap(u, tmp_path / "u.png")
    with Image.open(path) as im:
        arr = np.array(im)
        assert im.mode == "RGB" and im.text["recapfast:xi"] == "7.0" and im.text["recapfast:model"] == "baseline"
    assert set(np.unique(arr).tolist()) == {121, 135}              # 128 -+ 7
    back = load_uap(path)
    assert torch.equal(back.delta, u.delta) and back.xi == 7 and back.method == "random-sign"
    meta = json.loads((tmp_path / "u.json").read_text())
    assert meta["xi"] == 7 and meta["linf"] == 7 and meta["offset"] == 128
    with pytest.raises(FileExistsError):
        save_uap(u, path)
    save_uap(u, path, force=True)
    from PIL import PngImagePlugin

    bad = UAP(u.delta * 2, 7.0)
    pixels = (bad.delta + 128).permute(1, 2, 0).numpy().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "bad.png")
    with pytest.raises(UAPError, match="not a recapfast UAP"):      # any PNG without provenance is refused
        load_uap(tmp_path / "bad.png")
    info = PngImagePlugin.PngInfo()
    for key, value in (("xi", "7"), ("offset", "128"), ("method", "data-free")):
        info.add_text(f"recapfast:{key}", value)
    Image.fromarray(pixels).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(UAPError, match="above its xi"):              # a delta above the recorded xi is refused
        load_uap(tmp_path / "bad.png")


def test_evaluator_reports_uap_fooling_rate(small_model):
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (20,), generator=g)
    u = random_sign_uap(6, size=16, seed=1)                      # tiled to 32x32
    ev = Evaluator(small_model, [1], ("fgsm",), uap=u)
    ev.update(x[:12], y[:12])
    ev.update(x[12:], y[12:])
    res = ev.result("m")
    with torch.no_grad():
        clean = small_model(x.float()).argmax(1)
        pred = small_model(apply_uap(x, u.delta)).argmax(1)
    assert res.uap["fooled"] == int((pred != clean).sum())
    assert res.uap["fooling_rate"] == pytest.approx(float((pred != clean).float().mean()))
    assert res.uap["accuracy"] == pytest.approx(float((pred == y).float().mean()))
    assert 0 < res.uap["mean_linf"] <= 6 and 0 < res.uap["mean_ssim"] < 1
    md = res.to_markdown()
    assert "Universal perturbation" in md and "fooling rate" in md
    assert res.to_csv().strip().splitlines()[-1].split(",")[1] == "uap"


def test_cli_uap_then_eval_with_it(tmp_path, synth_dir, small_model):
    from typer.testing import CliRunner

    from recapfast.cli import app

    ckpt = rf.save_checkpoint(small_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "u.png"
    runner = CliRunner()
    r = runner.invoke(app, ["uap", "--model", str(ckpt), "--xi", "4", "--out", str(out), "--iters", "5", "-q"])
    assert r.exit_code == 0, r.output
    assert load_uap(out).delta.abs().max() <= 4 and (tmp_path / "u.json").is_file()
    again = runner.invoke(app, ["uap", "--model", str(ckpt), "--xi", "4", "--out", str(out), "-q"])
    assert again.exit_code == 1 and "--force" in again.output
    r = runner.invoke(app, ["uap", "--model", str(ckpt), "--xi", "3", "--out", str(tmp_path / "d.png"),
                            "--data", str(synth_dir), "--iters", "2", "--limit", "8", "-q"])
    assert r.exit_code == 0, r.output
    js = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "fgsm", "--eps", "1",
                            "--uap", str(out), "--json", str(js), "-q"])
    assert r.exit_code == 0, r.output
    assert "Universal perturbation" in r.output
    data = json.loads(js.read_text())
    assert data["uap"]["xi"] == 4 and 0 <= data["uap"]["fooling_rate"] <= 1
    bad = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--uap", str(tmp_path / "none.png")])
    assert bad.exit_code == 1


@pytest.mark.skipif(not resolve("baseline").is_file(), reason="bundled baseline weights not present")
def test_data_free_uap_beats_random_sign_noise_on_bundled_baseline(synth_dir):
    model = rf.load_model("baseline")
    x = load_patches(synth_dir, 64)
    xi = 2
    u = data_free_uap(model, xi, size=64, iterations=40, seed=0)
    uap_rate = fooling_rate(model, x, u.delta)
    noise_rates = [fooling_rate(model, x, random_sign_uap(xi, 64, seed=s).delta) for s in range(3)]
    assert int(u.delta.abs().max()) <= xi
    assert uap_rate > max(noise_rates), (uap_rate, noise_rates)

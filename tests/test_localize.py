"""Tile maps of P(recaptured), heatmap PNGs, and the map-fabricating IAP."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import recapfast as rf
from recapfast.attacks.localize import fabricate_map, heatmap_image, region_target, tile_map, tiles_of, untile


def image(h=70, w=100, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_tile_map_matches_the_model_on_each_tile(small_model):
    img = image()
    probs = tile_map(small_model, img, 32)
    assert probs.shape == (2, 3)
    x = torch.from_numpy(img).permute(2, 0, 1)
    with torch.no_grad():
        tile = x[:, 32:64, 64:96].unsqueeze(0).float()
        assert torch.allclose(probs[1, 2], torch.softmax(small_model(tile), 1)[0, 1], atol=1e-6)
    tiles, grid = tiles_of(x, 32)
    assert torch.equal(untile(tiles, grid, x), x)


def test_heatmap_png_shape_and_colors():
    img = image()
    probs = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]])
    out = np.array(heatmap_image(img, probs, 32, opacity=1.0))
    assert out.shape == img.shape
    assert out[5, 40].tolist() == [255, 0, 0] and out[5, 5].tolist() == [0, 0, 255]
    assert np.array_equal(out[64:], img[64:]) and np.array_equal(out[:, 96:], img[:, 96:])   # uncovered border


def test_fabricate_every_tile_original_and_a_region(small_model):
    img = image(64, 96, seed=2)
    grid = (2, 3)
    for label in (0, 1):
        res = fabricate_map(small_model, img, region_target(grid, label), eps=8, size=32, steps=10)
        assert res.linf <= 8 and torch.equal(res.adversarial, res.adversarial.round())
        assert res.tile_success.shape == grid
        assert res.success_rate == float(res.tile_success.float().mean())
        # the per-tile success is what the model says about the returned image
        assert torch.equal(tile_map(small_model, res.adversarial.to(torch.uint8), 32) >= 0.5,
                           res.adversarial_probs >= 0.5)
        assert torch.equal(res.tile_success, (res.adversarial_probs >= 0.5) == bool(label))
    region = region_target(grid, 1, (0, 1, 0, 2))
    res = fabricate_map(small_model, img, region, eps=8, size=32, steps=10)
    assert res.tile_success[1].sum() == 0 and 0 <= res.preserved_rate <= 1
    clean_pred = res.clean_probs >= 0.5
    adv_pred = res.adversarial_probs >= 0.5
    assert res.preserved_rate == float((clean_pred == adv_pred)[region < 0].float().mean())


def test_cli_eval_heatmap(tmp_path, synth_dir, small_model):
    from typer.testing import CliRunner

    from recapfast.cli import app

    ckpt = rf.save_checkpoint(small_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "maps"
    runner = CliRunner()
    args = ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "fgsm", "--eps", "1", "--size", "32",
            "--heatmap", str(out), "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    pngs = sorted(out.rglob("*.heatmap.png"))
    assert len(pngs) == 48 and (out / "original").is_dir()
    with Image.open(pngs[0]) as im:
        assert im.size == (420, 64 + 64)      # the 64 px image above a legend panel (issue 22; test_html_report)
    meta = json.loads((out / "heatmaps.json").read_text())
    assert meta["tile"] == 32 and len(meta["images"][0]["probs"]) == 2
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--force" in again.output

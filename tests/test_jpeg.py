"""JPEG survival against a plain Pillow loop, and --jpeg on the command line."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import recapfast as rf
from recapfast.engine.evaluate import evaluate_folder
from recapfast.engine.jpeg import jpeg_roundtrip, parse_qualities
from recapfast.engine.trust import TrustConfig
from recapfast.attacks.universal import load_patches


def pillow_jpeg(chw: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1)


def test_roundtrip_is_pillows(batch):
    x, _ = batch
    for q in (75, 90):
        want = np.stack([pillow_jpeg(img, q) for img in x.numpy()])
        assert np.array_equal(jpeg_roundtrip(x, q).numpy(), want)
        assert np.array_equal(jpeg_roundtrip(x.float() + 0.2, q).numpy(), want)     # floats: rounded first


def test_rows_equal_a_plain_pillow_loop(small_model, synth_dir):
    res = evaluate_folder(small_model, synth_dir, [2, 4], ("fgsm", "bim"), size=32, batch_size=16,
                          trust=TrustConfig(jpeg=(75, 90), detection=False, gradients=False))
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)
    chunks = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    with torch.no_grad():
        clean_ok = small_model(x.float()).argmax(1) == y
    for block in res.jpeg:
        q = block["quality"]
        cells = {(c["attack"], c["eps"]): c for c in block["cells"]}
        decoded = torch.from_numpy(np.stack([pillow_jpeg(img, q) for img in x.numpy()]))
        with torch.no_grad():
            assert cells[("clean", 0.0)]["correct"] == int((small_model(decoded.float()).argmax(1) == y).sum())
        for name, fn in (("fgsm", rf.fgsm), ("bim", rf.bim)):
            for e in (2.0, 4.0):
                adv = torch.cat([fn(small_model, xb, yb, e) for xb, yb in chunks]).to(torch.uint8)
                again = torch.from_numpy(np.stack([pillow_jpeg(img, q) for img in adv.numpy()]))
                with torch.no_grad():
                    adv_ok = small_model(adv.float()).argmax(1) == y
                    jpeg_ok = small_model(again.float()).argmax(1) == y
                c = cells[(name, e)]
                assert c["correct"] == int(jpeg_ok.sum())
                assert c["flipped"] == int((clean_ok & ~adv_ok).sum())
                assert c["still_flipped"] == int((clean_ok & ~adv_ok & ~jpeg_ok).sum())
    md = res.to_markdown()
    assert "| JPEG 75 | clean |" in md and "| JPEG 90 | BIM |" in md


def test_parse_and_cli(tmp_path, synth_dir, small_model):
    from typer.testing import CliRunner

    from recapfast.cli import app

    assert parse_qualities("90, 75,90") == [90, 75]
    for bad in ("0", "96", "x"):
        with pytest.raises(ValueError):
            parse_qualities(bad)
    ckpt = rf.save_checkpoint(small_model, tmp_path / "m.safetensors")
    out = tmp_path / "r.json"
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--attack", "fgsm", "--eps", "2",
                            "--jpeg", "80", "--size", "32", "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert [b["quality"] for b in json.loads(out.read_text())["jpeg"]] == [80]
    bad = runner.invoke(app, ["eval", str(synth_dir), "--model", str(ckpt), "--jpeg", "101", "-q"])
    assert bad.exit_code == 1 and "--jpeg" in bad.output

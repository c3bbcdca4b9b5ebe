"""Screening: records, tile maps, flip eps against a direct FGSM/LLCM computation, summary, outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import recapfast as rf
from recapfast.cli import app
from recapfast.engine.screen import ScreenConfig, OutputError, screen_folder, summary_path

from screen_helpers import jpeg_bytes, read_jsonl, write_images

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen") / "imgs"
    write_images(root, 6, shape=(96, 160, 3), seed=3)
    write_images(root / "sub", 3, shape=(64, 64, 3), seed=4)
    return root


def tile_probabilities(model, patches):
    with torch.no_grad():
        return torch.softmax(model(patches.float()), 1)[:, 1].double()


def test_records_schema_order_and_tile_map(tiny, folder, tmp_path, op_backend):
    out = tmp_path / "r.jsonl"
    res = screen_folder(tiny, folder, out, ScreenConfig(size=32, probe_eps=()))
    records = read_jsonl(out)
    paths = [r["path"] for r in records]
    assert paths == sorted(paths) and len(records) == 9
    assert paths[-3].startswith(str(folder / "sub"))
    r = records[0]
    for key in ("path", "bytes", "sha256", "width", "height", "tiles", "p_recaptured", "decision", "flip_eps",
                "fragile", "notes", "tile_map", "mtime_ns"):
        assert key in r
    assert (r["width"], r["height"], r["tiles"], r["grid"]) == (160, 96, 15, [3, 5])
    assert np.array(r["tile_map"]).shape == (3, 5)
    # p is the mean of the tile probabilities, computed here independently.
    from recapfast.data.folder import decode, to_patches

    img, _ = decode(r["path"])
    p_tiles = tile_probabilities(tiny, to_patches(img, 32, tile=True))
    assert r["p_recaptured"] == pytest.approx(float(p_tiles.mean()), abs=2e-6)
    assert np.allclose(np.array(r["tile_map"]).ravel(), p_tiles.numpy(), atol=1e-4)
    import hashlib

    assert r["sha256"] == hashlib.sha256(open(r["path"], "rb").read()).hexdigest()
    assert r["decision"] == ("recaptured" if r["p_recaptured"] >= 0.5 else "original")
    assert r["flip_eps"] is None and r["fragile"] is None and r["flip_attacks"] is None   # not probed
    s = json.loads(summary_path(out).read_text())
    assert s == res.summary
    assert s["records"] == 9 and s["screened"] == 9 and s["errors"] == 0
    assert sum(s["decisions"].values()) == 9 and s["this_run"]["images_per_second"] > 0


@pytest.mark.parametrize("probe_chunk", [4, 7, 1000])
def test_flip_eps_matches_direct_fgsm_llcm(tiny, folder, tmp_path, op_backend, probe_chunk):
    # Threshold at the median p so that decisions sit near it and small eps flip some of them.  Chunks of
    # 7 tiles split most files across chunks (every eps is attacked); chunks of 1000 hold whole files,
    # which stop being attacked at their first flipping eps.
    out0 = tmp_path / "p.jsonl"
    screen_folder(tiny, folder, out0, ScreenConfig(size=32, probe_eps=()))
    ps = sorted(r["p_recaptured"] for r in read_jsonl(out0))
    threshold = (ps[4] + ps[5]) / 2
    eps = (1.0, 2.0, 4.0, 8.0)
    out = tmp_path / "f.jsonl"
    screen_folder(tiny, folder, out, ScreenConfig(size=32, probe_eps=eps, threshold=threshold, fragile_eps=2,
                                                  probe_chunk=probe_chunk))
    from recapfast.data.folder import decode, to_patches

    flips = later = 0
    for r in read_jsonl(out):
        img, _ = decode(r["path"])
        x = to_patches(img, 32, tile=True)
        p = float(tile_probabilities(tiny, x).mean())
        decision = int(p >= threshold)
        assert r["decision"] == ("recaptured" if decision else "original")
        y = torch.full((x.shape[0],), decision)
        expected = None
        for e in eps:
            hit = []
            for name, attack in (("fgsm", rf.fgsm), ("llcm", rf.llcm)):
                p_adv = float(tile_probabilities(tiny, attack(tiny, x, y, e)).mean())
                if int(p_adv >= threshold) != decision:
                    hit.append(name)
            if hit:
                expected = e
                assert r["flip_attacks"] == hit
                break
        assert r["flip_eps"] == expected, r["path"]
        assert r["fragile"] == (expected is not None and expected <= 2)
        flips += expected is not None
        later += expected is not None and expected > eps[0]
    assert flips >= 1 and later >= 1  # real flips, and some after the first eps (early exit skips a file)


def test_large_tile_map_goes_to_a_side_file_inside_the_output_folder(tiny, tmp_path):
    write_images(tmp_path / "big", 1, shape=(256, 320, 3))
    out = tmp_path / "o" / "r.jsonl"
    out.parent.mkdir()
    screen_folder(tiny, tmp_path / "big", out, ScreenConfig(size=32, probe_eps=(), tile_map_inline=10))
    (r,) = read_jsonl(out)
    assert r["tile_map"] is None and r["tiles"] == 80
    side = out.parent / r["tile_map_file"]
    assert side.resolve().parent.parent == out.parent.resolve()
    assert np.array(json.loads(side.read_text())["tile_map"]).shape == (8, 10)


def test_never_overwrites_without_force_and_refuses_symlinked_outputs(tiny, folder, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    with pytest.raises(OutputError, match="exists"):
        screen_folder(tiny, folder, out, ScreenConfig(size=32, probe_eps=()))
    assert out.read_text() == "precious\n"
    screen_folder(tiny, folder, out, ScreenConfig(size=32, probe_eps=()), force=True)
    assert len(read_jsonl(out)) == 9
    elsewhere = tmp_path / "elsewhere.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symbolic link"):
        screen_folder(tiny, folder, link, ScreenConfig(size=32, probe_eps=()), force=True)
    assert not elsewhere.exists()
    with pytest.raises(OutputError, match="exclude"):
        screen_folder(tiny, folder, out, ScreenConfig(size=32), resume=True, force=True)


def test_cli_screen_csv_and_exit_codes(tiny_ckpt, folder, tmp_path, op_backend):
    out, csv_out = tmp_path / "r.jsonl", tmp_path / "r.csv"
    args = ["screen", str(folder), "--out", str(out), "--model", str(tiny_ckpt), "--size", "32",
            "--probe-eps", "1,2", "--device", "cpu", "--quiet", "--csv", str(csv_out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r.summary.json").read_text())     # stdout is the per-file table
    assert summary["records"] == 9 and "9 file(s): " in res.output
    assert csv_out.read_text().count("\n") == 10
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "exists" in res.output
    res = runner.invoke(app, args[:-2] + ["--force", "--probe-eps", "x"])
    assert res.exit_code == 1 and "--probe-eps" in res.output


def test_cli_refuses_tampered_mismatched_and_pickled_models(tiny_ckpt, folder, tmp_path):
    import shutil

    bad = tmp_path / "bad.safetensors"
    shutil.copy(tiny_ckpt, bad)
    shutil.copy(tiny_ckpt.with_suffix(".json"), bad.with_suffix(".json"))
    raw = bytearray(bad.read_bytes())
    raw[10:30] = b"\xff" * 20          # inside the safetensors JSON header
    bad.write_bytes(bytes(raw))
    mismatched = tmp_path / "mismatch.safetensors"
    shutil.copy(tiny_ckpt, mismatched)
    mismatched.with_suffix(".json").write_text(json.dumps({"model": {"widths": [8, 8, 8, 8, 8]}}))
    pickled = tmp_path / "model.pt"
    torch.save({"x": 1}, pickled)
    for model, message in ((bad, "not a valid safetensors"), (mismatched, "do not fit"),
                           (pickled, "a .safetensors checkpoint, a torch.export .pt2 program")):   # eval's message
        res = runner.invoke(app, ["screen", str(folder), "--out", str(tmp_path / "x.jsonl"), "--model", str(model),
                                  "--device", "cpu", "--quiet"])
        assert res.exit_code == 1, res.output
        assert message in res.output
    assert not (tmp_path / "x.jsonl").exists()


def test_jpeg_512_screening_smoke(tiny, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jpg").write_bytes(jpeg_bytes(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)))
    out = tmp_path / "j.jsonl"
    screen_folder(tiny, tmp_path / "j", out, ScreenConfig(size=64, probe_eps=(1,)))
    (r,) = read_jsonl(out)
    assert r["tiles"] == 64 and r["grid"] == [8, 8] and r["tile_map"] is not None

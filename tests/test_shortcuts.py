"""The shortcut measurements (recapfast.engine.shortcuts) against direct computations on real files."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from recapfast.engine import shortcuts
from recapfast.models.checkpoint import file_sha256
from recapfast.models.zoo import load_recapfast


@pytest.fixture(scope="module")
def model():
    return load_recapfast("baseline").eval()


def _decide(model, patches: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(patches).permute(0, 3, 1, 2).float()).argmax(1).numpy()


def test_tiles_counts_every_64px_tile_of_each_file(model, tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "photos" / "original"
    d.mkdir(parents=True)
    imgs = {"a.png": rng.integers(0, 256, (130, 200, 3), dtype=np.uint8),      # 2 x 3 tiles (edges dropped)
            "b.png": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}
    for name, img in imgs.items():
        Image.fromarray(img).save(d / name)
    Image.fromarray(imgs["a.png"][:40, :40]).save(d / "small.png")              # no whole tile: left out
    res = shortcuts.tiles(model, str(tmp_path / "photos"))
    rows = {r["file"]: r for r in res["rows"]}
    assert set(rows) == {"original/a.png", "original/b.png"}
    a = imgs["a.png"]
    tiles = np.stack([a[y:y + 64, x:x + 64] for y in (0, 64) for x in (0, 64, 128)])
    assert rows["original/a.png"]["tiles"] == 6
    assert rows["original/a.png"]["correct"] == int(np.sum(_decide(model, tiles) == 0))
    assert res["tiles"] == 7 and res["accuracy"] == pytest.approx(sum(r["correct"] for r in rows.values()) / 7)


def test_jpeg_resaves_both_classes_and_reports_each(model, tmp_path):
    rng = np.random.default_rng(1)
    for c in ("original", "recaptured"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    res = shortcuts.jpeg(model, str(tmp_path), (90,))
    assert [r["jpeg_quality"] for r in res["rows"]] == [None, 90] and res["patches"] == 6
    labels, crops = [], []
    for label, c in enumerate(("original", "recaptured")):
        for i in range(3):
            img = np.asarray(Image.open(tmp_path / c / f"{i}.png"))[8:72, 8:72]
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            crops.append(np.asarray(Image.open(buf).convert("RGB")))
            labels.append(label)
    want = float(np.mean(_decide(model, np.stack(crops)) == np.array(labels)))
    assert res["rows"][1]["accuracy"] == pytest.approx(want)


def test_cli_records_the_weights_sha256_and_names_a_bad_folder(tmp_path, capsys):
    out = tmp_path / "t.json"
    (tmp_path / "p" / "original").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "p" / "original" / "z.png")
    assert shortcuts.main(["tiles", "baseline", str(tmp_path / "p"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["model_sha256"] == file_sha256("baseline")
    assert shortcuts.main(["jpeg", "baseline", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]


def test_sources_groups_a_scene_split_by_photo(model, tmp_path):
    from recapfast.data import scenes
    from recapfast.data.synth_sets import synthesize

    paths = scenes.sample_photo_paths()
    if len(paths) < 6:
        pytest.skip("scikit-image / scikit-learn sample photos are not installed")
    d = tmp_path / "photos"
    d.mkdir()
    for p in paths[:6]:
        (d / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    synthesize(tmp_path / "ds", size=64, count=10, seed=1, workers=1, scenes_dir=d, split=(0.5, 0.0, 0.5))
    res = shortcuts.sources(model, str(tmp_path / "ds"), "test")
    man = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    photos = set(man["splits"]["test"]["photos"])
    assert {r["source"] for r in res["rows"]} <= photos and res["patches"] == 10
    assert sum(r["patches"] for r in res["rows"]) == 10
    assert res["accuracy"] == pytest.approx(sum(r["accuracy"] * r["patches"] for r in res["rows"]) / 10)

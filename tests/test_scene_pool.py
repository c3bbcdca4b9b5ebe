"""The real-photo scene pool: group-aware splits, several --scenes folders, the exporter (recapfast.data.scenes)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from recapfast.cli import app
from recapfast.data import scenes

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def _photo(name, group=None):
    return scenes.Photo(name, "0" * 64, 200, 150, group)


@pytest.fixture(scope="module")
def samples():
    paths = scenes.sample_photo_paths()
    if len(paths) < 6:
        pytest.skip("scikit-image / scikit-learn sample photos are not installed (pip install '.[test]')")
    return paths


# ------------------------------------------------------------------------------------------
# group-aware split
# ------------------------------------------------------------------------------------------

def test_split_keeps_groups_whole_and_is_deterministic():
    photos = [_photo(f"p{i:02d}.png") for i in range(20)]
    groups = {"g:a": 5, "g:b": 3, "g:c": 2, "g:d": 4}
    for g, n in groups.items():
        photos += [_photo(f"{g[2:]}{k}.png", g) for k in range(n)]
    for seed in range(12):
        parts = scenes.split_photos(photos, (0.6, 0.2, 0.2), seed)
        assert sorted(i for v in parts.values() for i in v) == list(range(len(photos)))
        assert all(parts.values())
        where = {}
        for split, idx in parts.items():
            for i in idx:
                assert where.setdefault(photos[i].source, split) == split, f"seed {seed}: {photos[i].source} split"
        again = scenes.split_photos(list(reversed(photos)), (0.6, 0.2, 0.2), seed)   # order of the list: irrelevant
        rev = list(reversed(photos))
        assert {k: sorted(rev[i].name for i in v) for k, v in again.items()} == \
            {k: sorted(photos[i].name for i in v) for k, v in parts.items()}
    # the fractions count sources: 24 sources -> floor 14/4/4, the 2 left over in order -> 15/5/4
    parts = scenes.split_photos(photos, (0.6, 0.2, 0.2), 0)
    assert [len({photos[i].source for i in parts[k]}) for k in scenes.SPLIT_NAMES] == [15, 5, 4]


def test_split_without_groups_is_the_split_by_photo():
    """One photo per source: the earlier algorithm (sorted names, one permutation), so old manifests keep their meaning."""
    photos = [_photo(f"x{i:03d}.jpg") for i in range(37)]
    for seed in (0, 1, 7):
        n = len(photos)
        perm = np.random.default_rng([seed, 7_772_201]).permutation(n)
        counts = [29, 3, 3]         # floor(0.8 * 37) = 29, floor(3.7) = 3, floor(3.7) = 3, the rest (2) in order
        counts[0] += 1
        counts[1] += 1
        order = [sorted(range(n), key=lambda i: photos[i].name)[i] for i in perm]
        expect, start = {}, 0
        for name, c in zip(scenes.SPLIT_NAMES, counts):
            expect[name] = sorted(order[start:start + c])
            start += c
        assert scenes.split_photos(photos, (0.8, 0.1, 0.1), seed) == expect


def test_groups_file_and_identical_copies(tmp_path, samples):
    d = tmp_path / "pool"
    d.mkdir()
    for p in samples[:6]:
        shutil.copy(p, d / os.path.basename(p))
    a, b = os.path.basename(samples[0]), os.path.basename(samples[1])
    shutil.copy(samples[2], d / ("copy-" + os.path.basename(samples[2])))       # same bytes: one source
    (d / scenes.GROUPS_FILE).write_text(json.dumps({"pair": [a, b]}))
    photos, _, _ = scenes.load_photos(d)
    by = {p.name: p for p in photos}
    assert by[a].source == by[b].source == "group:pair"
    assert by["copy-" + os.path.basename(samples[2])].source == os.path.basename(samples[2])
    assert len({p.source for p in photos}) == len(photos) - 2
    (d / scenes.GROUPS_FILE).write_text('{"x": "not a list"}')
    with pytest.raises(scenes.DataError, match=scenes.GROUPS_FILE):
        scenes.load_photos(d)


# ------------------------------------------------------------------------------------------
# several --scenes folders
# ------------------------------------------------------------------------------------------

def test_synth_with_several_scene_folders(tmp_path, samples):
    one, two = tmp_path / "one" / "photos", tmp_path / "two" / "photos"     # same base name: numbered prefixes
    for d, part in ((one, samples[:4]), (two, samples[4:8])):
        d.mkdir(parents=True)
        for p in part:
            shutil.copy(p, d / os.path.basename(p))
    shutil.copy(samples[0], two / "dup.png")                                    # a copy across folders
    (one / scenes.GROUPS_FILE).write_text(json.dumps({"g": [os.path.basename(p) for p in samples[1:3]]}))
    runner = CliRunner()
    res = runner.invoke(app, ["synth", str(tmp_path / "out"), "--scenes", str(one), "--scenes", str(two),
                              "--count", "10", "--size", "16", "--workers", "1", "--split", "0.5,0.25,0.25"])
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["scenes"]["folder"] == ["1-photos", "2-photos"]
    names = [p["name"] for p in man["scenes"]["photos"]]
    assert len(names) == len(set(names)) == 9
    assert {n.split("/")[0] for n in names} == {"1-photos", "2-photos"}
    source = {p["name"]: p.get("group", p["name"]) for p in man["scenes"]["photos"]}
    assert source["2-photos/dup.png"] == f"1-photos/{os.path.basename(samples[0])}"
    assert len({source[f"1-photos/{os.path.basename(p)}"] for p in samples[1:3]}) == 1
    where = {}
    for split, part in man["splits"].items():
        for n in part["photos"]:
            assert where.setdefault(source[n], split) == split
        for rec in part["files"]:
            sc = rec["params"]["scene"]
            assert sc["kind"] == "procedural" or sc["photo"] in part["photos"]
    assert set(where) == set(source.values())

    # one folder: the manifest format is the earlier one (no prefixes, folder is a string)
    res = runner.invoke(app, ["synth", str(tmp_path / "out1"), "--scenes", str(two), "--count", "4", "--size", "16",
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "out1" / "manifest.json").read_text())
    assert man["scenes"]["folder"] == "photos"
    assert "dup.png" in [p["name"] for p in man["scenes"]["photos"]]

    res = runner.invoke(app, ["synth", str(tmp_path / "out2"), "--scenes", str(one), "--scenes",
                              str(tmp_path / "missing"), "--count", "2"])
    assert res.exit_code == 1 and "missing: no such folder" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------
# the exporter
# ------------------------------------------------------------------------------------------

def test_export_without_opencv_doc(tmp_path, monkeypatch, capsys, samples):
    monkeypatch.setattr(scenes, "OPENCV_DATA", str(tmp_path / "no-opencv-doc"))
    lines = []
    out = scenes.export_scene_pool(tmp_path / "pool", log=lines.append)
    assert len(lines) == 1 and "apt-get install opencv-doc" in lines[0] and "no-opencv-doc" in lines[0]
    names = {os.path.basename(p) for p in samples}
    assert set(out["train"]) | set(out["heldout"]) == names
    assert set(out["heldout"]) == names & set(scenes.HELDOUT_PHOTOS)
    assert sorted(os.listdir(tmp_path / "pool" / "heldout" / "original")) == sorted(out["heldout"])
    assert sorted(os.listdir(tmp_path / "pool" / "train")) == sorted(out["train"])         # no groups file
    assert scenes.export_sample_photos(tmp_path / "pool2") == {"train": out["train"], "heldout": out["heldout"]}

    # python -m recapfast.data.scenes OUT: the same, one message line and one summary line
    capsys.readouterr()
    assert scenes.main([str(tmp_path / "pool3")]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "apt-get install opencv-doc" in cap.err
    assert cap.out.count("\n") == 1 and cap.out.startswith(f"exported {len(names)} real photographs: ")
    # --samples-only (the bundled models' pool): the samples, no message even with opencv-doc installed
    monkeypatch.undo()
    assert scenes.main(["--samples-only", str(tmp_path / "pool5")]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out.startswith(f"exported {len(names)} real photographs: ")
    assert sorted(os.listdir(tmp_path / "pool5" / "train")) == sorted(out["train"])
    assert scenes.main(["--bogus", str(tmp_path / "pool6")]) == 2
    monkeypatch.setattr(scenes, "OPENCV_DATA", str(tmp_path / "no-opencv-doc"))
    monkeypatch.setattr(scenes, "sample_photo_paths", lambda: [])          # nothing at all: the DataError, exit 1
    assert scenes.main([str(tmp_path / "pool4")]) == 1
    assert "pip install scikit-image scikit-learn" in capsys.readouterr().err


def test_curation_covers_every_opencv_file():
    """Every image of the curated OpenCV list is kept or skipped (with its reason in docs/data.md)."""
    kept = [n for n, _g, _w in scenes.OPENCV_PHOTOS]
    skipped = [n for n, _r in scenes.OPENCV_SKIPPED]
    assert len(set(kept)) == len(kept) and len(set(skipped)) == len(skipped) and not set(kept) & set(skipped)
    assert set(scenes.OPENCV_HELDOUT_GROUPS) <= {g for _n, g, _w in scenes.OPENCV_PHOTOS}
    docs = DOCS.read_text()
    for name in skipped:
        if not name.startswith(("left", "right")):      # the calibration series is one line
            assert name in docs, f"{name}: its reason for being skipped is not in docs/data.md"
    for name in kept + [h for h in scenes.HELDOUT_PHOTOS]:
        assert name.rsplit(".", 1)[0].rstrip("0123456789LRAB") in docs
    if os.path.isdir(scenes.OPENCV_DATA):
        on_disk = {f for f in os.listdir(scenes.OPENCV_DATA) if f.lower().endswith((".jpg", ".jpeg", ".png"))}
        assert on_disk <= set(kept) | set(skipped), f"not curated: {sorted(on_disk - set(kept) - set(skipped))}"


def test_export_with_opencv_doc(tmp_path, samples):
    if not os.path.isdir(scenes.OPENCV_DATA):
        pytest.skip(f"opencv-doc is not installed ({scenes.OPENCV_DATA}): apt-get install opencv-doc")
    lines = []
    out = scenes.export_scene_pool(tmp_path / "pool", log=lines.append)
    assert lines == [] and out["missing"] == []
    assert len(out["train"]) + len(out["heldout"]) >= 40 and len(out["heldout"]) >= 6
    group_of = {n: g for n, g, _w in scenes.OPENCV_PHOTOS}
    held = {group_of.get(n, n) for n in out["heldout"]}
    assert not held & {group_of.get(n, n) for n in out["train"]}, "a group is split across train and heldout"
    assert {"chelsea.png", "coffee.png", "china.jpg", "flower.jpg"} <= set(out["heldout"])
    assert len(held) >= 7
    # the exported train folder loads with its groups; a split never separates them
    photos, _, skipped = scenes.load_photos(tmp_path / "pool" / "train")
    assert skipped == [] and len(photos) == len(out["train"])
    by_group = {}
    for p in photos:
        if p.name in group_of:
            by_group.setdefault(group_of[p.name], set()).add(p.source)
    assert all(len(v) == 1 for v in by_group.values())
    for seed in range(5):
        parts = scenes.split_photos(photos, (0.8, 0.1, 0.1), seed)
        where = {}
        for split, idx in parts.items():
            for i in idx:
                assert where.setdefault(photos[i].source, split) == split
    for name in out["heldout"] + out["train"]:
        assert Image.open(tmp_path / "pool" / ("heldout/original" if name in out["heldout"] else "train") / name)

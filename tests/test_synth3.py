"""Generator v3 (recapfast.data.synth3), real-photo scenes (recapfast.data.scenes) and `recapfast synth --scenes`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from recapfast.data import scenes, synth3
from recapfast.cli import app
from recapfast.data.synth_sets import synthesize

from test_synth import _global_statistics, _logistic_regression_accuracy, _read_interleaved

SIZE = 64


def test_v3_synthesize_layout_and_parallel_equals_serial(tmp_path):
    a = synthesize(tmp_path / "a", size=32, count=6, seed=5, workers=1)
    b = synthesize(tmp_path / "b", size=32, count=6, seed=5, workers=2)
    assert a["generator"] == synth3.GENERATOR_VERSION == "recapfast.synth/3.1"
    assert [f["sha256"] for f in a["files"]] == [f["sha256"] for f in b["files"]]
    img, _ = synth3.render_indexed(32, 1, 4, seed=5)
    with Image.open(tmp_path / "a" / "recaptured" / "000004.png") as im:
        assert np.array_equal(np.asarray(im), img)
    v2 = synthesize(tmp_path / "v2", size=32, count=2, seed=5, workers=1, generator="v2")
    assert v2["generator"] == "recapfast.synth/2"


# ------------------------------------------------------------------------------------------
# global statistics and trace energy (one shared data set)
# ------------------------------------------------------------------------------------------

N_PER_CLASS = 400


@pytest.fixture(scope="module")
def v3_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("v3") / "ds"
    synthesize(out, size=SIZE, count=N_PER_CLASS, seed=2025, workers=2)
    return _read_interleaved(out, N_PER_CLASS)


def test_v3_global_statistics_do_not_separate_the_classes(v3_dataset):
    x, y = v3_dataset
    acc = _logistic_regression_accuracy(_global_statistics(x), y, n_train=len(y) // 2)
    print(f"\nv3: logistic regression on global statistics: held-out accuracy {acc:.3f}")
    assert acc <= 0.65


def test_v3_trace_energy_is_below_the_documented_bound():
    res = synth3.trace_energy(SIZE, 24, seed=11)
    print(f"\nv3 trace energy: {res}")
    assert res["recaptured"]["mean"] <= synth3.TRACE_ENERGY_BOUND
    assert res["recaptured"]["mean"] > 0.2                       # there IS a trace
    assert res["sign_pattern_eps1"] == pytest.approx(0.8862, abs=1e-4)


def test_trace_energy_exceeds_the_bound_when_the_optics_do_not_attenuate(monkeypatch):
    """The bound is not vacuous: a camera far sharper than its pixels (v2's mistake), close enough
    to resolve the display pixels, leaves a trace many times above it."""
    sharp = {"core_sigma": 0.05, "halo_sigma": 0.05, "core_weight": 1.0, "defocus_sigma": 0.0, "olpf": None,
             "fill_factor": 0.3}
    monkeypatch.setattr(synth3, "_draw_optics", lambda rng: (rng.random(), dict(sharp))[1])
    real_geo = synth3._draw_geometry

    def close(rng):
        geo = real_geo(rng)
        geo["scale"] = 0.45
        return geo

    monkeypatch.setattr(synth3, "_draw_geometry", close)
    res = synth3.trace_energy(SIZE, 8, seed=11)
    assert res["recaptured"]["mean"] > 2 * synth3.TRACE_ENERGY_BOUND


# ------------------------------------------------------------------------------------------
# real-photo scenes
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    paths = scenes.sample_photo_paths()
    if len(paths) < 6:
        pytest.skip("scikit-image / scikit-learn sample photos are not installed (pip install '.[test]')")
    d = tmp_path_factory.mktemp("photos")
    for p in paths:
        (d / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    return d


def test_scene_split_has_no_leakage(photo_dir, tmp_path):
    man = synthesize(tmp_path / "ds", size=32, count=20, seed=3, workers=2, scenes_dir=photo_dir,
                     split=(0.6, 0.2, 0.2), procedural=0.3, direct=0.5)
    splits = man["splits"]
    assert set(splits) == {"train", "val", "test"}
    photo_sets = {k: set(v["photos"]) for k, v in splits.items()}
    assert all(photo_sets.values())
    assert not (photo_sets["train"] & photo_sets["val"]) and not (photo_sets["train"] & photo_sets["test"]) \
        and not (photo_sets["val"] & photo_sets["test"])
    assert set().union(*photo_sets.values()) == {p["name"] for p in man["scenes"]["photos"]}
    kinds = set()
    for name, part in splits.items():
        assert len(part["files"]) == 2 * part["count"]
        for rec in part["files"]:
            assert rec["file"].startswith(f"{name}/")
            assert (tmp_path / "ds" / rec["file"]).is_file()
            scene = rec["params"]["scene"]
            kinds.add(scene["kind"])
            if scene["kind"] != "procedural":
                assert scene["photo"] in photo_sets[name]       # never a photo of another split
    assert kinds == {"procedural", "photo", "photo, used directly"}
    # the split depends only on the photo names and the seed
    again = scenes.split_photos(scenes.load_photos(photo_dir)[0], (0.6, 0.2, 0.2), 3)
    assert {k: len(v) for k, v in again.items()} == {k: len(v["photos"]) for k, v in splits.items()}


def test_scenes_with_broken_and_odd_files(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)).save(d / "good.png")
    Image.fromarray(rng.integers(0, 256, (130, 100), dtype=np.uint8)).save(d / "grey.png")       # usable
    Image.fromarray(rng.integers(0, 256, (110, 140, 4), dtype=np.uint8)).save(d / "rgba.png")    # usable
    good = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    (d / "notes.jpg").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / "tiny.png")
    (d / "readme.txt").write_text("ignored: not an image name")
    runner = CliRunner()
    res = runner.invoke(app, ["synth", str(tmp_path / "out"), "--scenes", str(d), "--count", "4", "--size", "32",
                              "--workers", "1", "--split", "0.34,0.33,0.33"])
    assert res.exit_code == 0, res.output
    for name in ("truncated.png", "notes.jpg", "empty.png", "tiny.png"):
        assert f"skipping scene {d / name}" in res.output
    assert "good.png" not in res.output.split("wrote")[0]
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(p["name"] for p in man["scenes"]["photos"]) == ["good.png", "grey.png", "rgba.png"]
    assert sorted(s["name"] for s in man["scenes"]["skipped"]) == ["empty.png", "notes.jpg", "tiny.png", "truncated.png"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("nope")
    res = runner.invoke(app, ["synth", str(tmp_path / "out2"), "--scenes", str(bad), "--count", "2"])
    assert res.exit_code == 1
    assert "no usable photograph" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["synth", str(tmp_path / "out3"), "--scenes", str(tmp_path / "missing"), "--count", "2"])
    assert res.exit_code == 1 and "no such folder" in res.output


# ------------------------------------------------------------------------------------------
# photos used directly in both classes (recapfast.synth/3.1)
# ------------------------------------------------------------------------------------------

def _photo_source(photo_dir, names=None):
    photos, arrays, _ = scenes.load_photos(photo_dir)
    keep = [i for i, p in enumerate(photos) if names is None or p.name in names]
    return synth3.SceneSource([arrays[i] for i in keep], [photos[i].name for i in keep], procedural=0.0, direct=1.0)


def test_a_recapture_of_a_photo_carries_the_histogram_of_what_it_showed(photo_dir):
    """Without the JPEG stage the recapture is rank matched to the very crop it showed: per channel, the same
    multiset of values as the original drawn with the same parameters (both classes draw identically)."""
    src = _photo_source(photo_dir)
    for i in range(4):
        rec, rp = synth3.render(48, True, np.random.default_rng([7, i]), jpeg_prob=0.0, scenes=src)
        org, op = synth3.render(48, False, np.random.default_rng([7, i]), jpeg_prob=0.0, scenes=src)
        assert rp["shown"] == "the original's own pixels" and op["scene"]["kind"] == "photo, used directly"
        assert rp["scene"] == op["scene"]
        for c in range(3):
            assert np.array_equal(np.sort(rec[..., c], axis=None), np.sort(org[..., c], axis=None))
        assert not np.array_equal(rec, org)                   # the display and the second camera left a trace


def test_a_greyscale_photo_gives_greyscale_images_in_both_classes(tmp_path):
    d = tmp_path / "grey"
    d.mkdir()
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 40), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    Image.fromarray(base).save(d / "grey.png")
    src = _photo_source(d)
    for label in (0, 1):
        for i in range(3):
            img, _ = synth3.render(32, bool(label), np.random.default_rng([3, label, i]), jpeg_prob=0.5, scenes=src)
            assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


def test_photo_world_global_statistics_do_not_separate_the_classes(photo_dir, tmp_path):
    n = 200
    synthesize(tmp_path / "ds", size=SIZE, count=n, seed=2026, workers=2, scenes_dir=photo_dir,
               split=(1.0, 0.0, 0.0), procedural=0.0, direct=1.0)
    x, y = _read_interleaved(tmp_path / "ds" / "train", n)
    acc = _logistic_regression_accuracy(_global_statistics(x), y, n_train=len(y) // 2)
    print(f"\nv3.1 photos: logistic regression on global statistics: held-out accuracy {acc:.3f}")
    assert acc <= 0.65

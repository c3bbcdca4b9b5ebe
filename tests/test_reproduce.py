"""`recapfast reproduce`: end to end on a tiny run, the split, resume, findings, refusal to overwrite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from recapfast.reproduction import run as rp
from recapfast.reproduction.paper import findings
from recapfast.reproduction.provenance import git_commit
from recapfast.reproduction.config import ReproduceConfig, ReproduceError
from recapfast.data.splits import split_counts, split_samples
from recapfast.cli import app
from recapfast.data.folder import Sample

pytest.importorskip("matplotlib")

TINY = dict(sizes=(32,), count=16, iters=4, lr=1e-3, widths=(4, 8, 8, 16, 16), eval_batch=16)


@pytest.fixture(scope="module", autouse=True)
def cheap_worst_stage():
    """The worst stage at a fraction of its default strength (its own tests: tests/test_reproduce_worst.py)."""
    from recapfast.attacks.apgd import APGDConfig
    from recapfast.attacks.square import SquareConfig
    from recapfast.engine.trust import TrustConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp, "worst_trust", lambda: TrustConfig(cascade=True, apgd=APGDConfig(steps=5),
                                                          square=SquareConfig(queries=20)))
        yield


def tiny_config(**overrides) -> ReproduceConfig:
    return ReproduceConfig(**{**TINY, **overrides})


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("repro") / "out"
    result = rp.reproduce(out, tiny_config(), workers=1, log=quiet, notes="tiny test run")
    return out, result


def test_end_to_end_outputs(tiny_run):
    out, result = tiny_run
    assert result.ran == [f"32/{s}" for s in ("data", "split", "baseline", "robust", "eval", "worst", "measure",
                                                    "figures")]
    report = (out / "report.md").read_text()
    for heading in ("## Table 1", "## Table 2", "## Table 3", "## Findings", "## Data manifest", "## Environment"):
        assert heading in report
    assert "96.7%" in report and "tiny test run" in report           # paper numbers beside ours; the notes
    assert "no GPU was available" in report
    data = json.loads((out / "results.json").read_text())
    numbers = data["sizes"]["32"]["numbers"]
    for model in ("baseline", "robust"):
        assert 0.0 <= numbers[model]["clean"] <= 1.0
        assert len(numbers[model]["fgsm"]) == len(numbers[model]["llcm"]) == 5
    assert set(data["sizes"]["32"]["findings"]) == set("abcd")
    assert data["sizes"]["32"]["data"]["generator"] == "recapfast.synth/3.1"
    meas = data["sizes"]["32"]["measured"]["baseline"]
    assert meas["patches"] == 16 and meas["clean_correct"] + meas["clean_wrong"] == 16
    assert sum(meas["bim_flip_eps_histogram"].values()) == meas["clean_correct"]
    assert "BIM-to-flip on 16 test patches" in report and "Why:" not in report
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    assert len(data["sizes"]["32"]["data"]["manifest"]["sha256"]) == 64
    for rel in data["sizes"]["32"]["figures"]:
        png = out / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({rel})" in report
    # bulky things stay under work/, which OUT/.gitignore excludes
    assert (out / ".gitignore").read_text().strip().endswith("work/")
    assert (out / "work" / "32" / "baseline.safetensors").is_file()
    assert {p.name for p in out.iterdir()} == {".gitignore", "report.md", "results.json", "state.json", "plots", "work"}


def test_results_name_the_commit_of_this_checkout(tiny_run):
    out, _ = tiny_run
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    git = json.loads((out / "results.json").read_text())["git"]
    assert git["commit"] == head.stdout.strip() == git_commit()["commit"]
    assert f"commit: {git['commit']}" in (out / "report.md").read_text()


def test_split_is_deterministic_disjoint_40_10_50():
    samples = [Sample(f"/d/{'original' if c == 0 else 'recaptured'}/{i:04d}.png", c) for c in (0, 1) for i in range(200)]
    parts = split_samples(samples, seed=3)
    again = split_samples(list(reversed(samples)), seed=3)
    assert parts == again                                         # independent of input order
    assert parts != split_samples(samples, seed=4)
    sets = {k: {s.path for s in v} for k, v in parts.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert set().union(*sets.values()) == {s.path for s in samples}
    for c in (0, 1):
        assert [sum(1 for s in parts[k] if s.label == c) for k in ("train", "val", "test")] == [80, 20, 100]
    assert split_counts(33) == (13, 3, 17)


def test_materialized_split_matches_lists(tiny_run):
    out, _ = tiny_run
    lists = json.loads((out / "work" / "32" / "split.json").read_text())
    assert [len(lists[k]) for k in ("train", "val", "test")] == [12, 4, 16]    # 6/2/8 per class of 16
    test_links = sorted(p for p in (out / "work" / "32" / "split" / "test").rglob("*.png"))
    assert len(test_links) == 16 and all(p.is_symlink() and p.resolve().is_file() for p in test_links)
    assert not os.path.isabs(os.readlink(test_links[0]))                       # relative: OUT can move


def test_rerun_skips_finished_stages(tiny_run):
    out, _ = tiny_run
    before = json.loads((out / "state.json").read_text())["stages"]
    again = rp.reproduce(out, tiny_config(), workers=1, log=quiet)
    assert again.ran == [] and len(again.skipped) == 8
    assert json.loads((out / "state.json").read_text())["stages"] == before


def test_resume_after_a_failed_stage(tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    real = rp._train_model

    def failing(train_dir, val_dir, ckpt, config, device, log):
        calls.append(ckpt.name)
        if config.robust:
            raise RuntimeError("killed")
        return real(train_dir, val_dir, ckpt, config, device, log)

    monkeypatch.setattr(rp, "_train_model", failing)
    with pytest.raises(RuntimeError, match="killed"):
        rp.reproduce(out, tiny_config(), workers=1, log=quiet)
    state = json.loads((out / "state.json").read_text())["stages"]
    assert list(state) == ["32/data", "32/split", "32/baseline"]
    monkeypatch.setattr(rp, "_train_model", real)
    logs = []
    result = rp.reproduce(out, tiny_config(), workers=1, log=logs.append)
    assert result.skipped == ["32/data", "32/split", "32/baseline"]
    assert result.ran == ["32/robust", "32/eval", "32/worst", "32/measure", "32/figures"]
    after = json.loads((out / "state.json").read_text())["stages"]
    for name in ("32/data", "32/split", "32/baseline"):
        assert after[name] == state[name]                            # same record, same finished_at
    assert (out / "report.md").is_file()

    # A training stage killed after its resume state was written continues from it.
    del after["32/robust"], after["32/eval"], after["32/worst"], after["32/measure"], after["32/figures"]
    full = json.loads((out / "state.json").read_text())
    full["stages"] = after
    (out / "state.json").write_text(json.dumps(full))
    logs.clear()
    result = rp.reproduce(out, tiny_config(), workers=1, log=logs.append)
    assert result.ran == ["32/robust", "32/eval", "32/worst", "32/measure", "32/figures"]
    assert any("resuming" in line for line in logs)


def test_stop_after_then_continue(tmp_path):
    out = tmp_path / "out"
    first = rp.reproduce(out, tiny_config(), workers=1, log=quiet, stop_after="32/split")
    assert first.ran == ["32/data", "32/split"] and not (out / "report.md").exists()
    stamp = json.loads((out / "state.json").read_text())["stages"]["32/data"]["finished_at"]
    second = rp.reproduce(out, tiny_config(), workers=1, log=quiet)
    assert second.skipped == ["32/data", "32/split"]
    assert json.loads((out / "state.json").read_text())["stages"]["32/data"]["finished_at"] == stamp


def test_refuses_foreign_or_different_out(tmp_path, tiny_run):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ReproduceError, match="not empty"):
        rp.reproduce(foreign, tiny_config(), workers=1, log=quiet)
    out, _ = tiny_run
    with pytest.raises(ReproduceError, match="other settings .*iters"):
        rp.reproduce(out, tiny_config(iters=5), workers=1, log=quiet)
    runner = CliRunner()
    res = runner.invoke(app, ["reproduce", str(foreign), "--sizes", "32", "--count", "16", "--iters", "2"])
    assert res.exit_code == 1
    assert "not empty" in res.output and "Traceback" not in res.output
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_force_starts_over_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "out"
    rp.reproduce(out, tiny_config(), workers=1, log=quiet, stop_after="32/data")
    (out / "mine.txt").write_text("user file")
    result = rp.reproduce(out, tiny_config(iters=2), workers=1, log=quiet, force=True, stop_after="32/split")
    assert result.ran == ["32/data", "32/split"]
    assert (out / "mine.txt").read_text() == "user file"
    assert json.loads((out / "state.json").read_text())["config"]["iters"] == 2


def test_cli_validation_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["reproduce", str(tmp_path / "o"), "--sizes", "64,x"])
    assert res.exit_code == 1 and "--sizes" in res.output
    res = runner.invoke(app, ["reproduce", str(tmp_path / "o"), "--sizes", "64", "--data", str(tmp_path)])
    assert res.exit_code == 1 and "64/" in res.output
    res = runner.invoke(app, ["reproduce", str(tmp_path / "o"), "--protocol", "laptop"])
    assert res.exit_code == 1 and "--protocol" in res.output
    res = runner.invoke(app, ["reproduce", str(tmp_path / "o"), "--protocol", "cpu", "--count", "10,20"])
    assert res.exit_code == 1 and "--count" in res.output and not (tmp_path / "o").exists()


PAPERLIKE = {"baseline": {"clean": 0.967, "fgsm": [0.028, 0.009, 0.005, 0.006, 0.026],
                          "llcm": [0.075, 0.057, 0.052, 0.053, 0.069]},
             "robust": {"clean": 0.966, "fgsm": [0.936, 0.945, 0.961, 0.963, 0.959],
                        "llcm": [0.900, 0.916, 0.930, 0.933, 0.930]}}


# Measurements as recapfast.engine.flipdist.measure returns them (10 patches, 2 misclassified when clean).
MEASURED = {m: {"patches": 10, "clean_correct": 8, "clean_wrong": 2, "eps": [1.0, 2.0, 3.0, 4.0, 5.0],
                "fgsm_llcm_identical": [0.8, 0.8, 0.7, 0.8, 0.8],
                "misclassified_correct_after": {"fgsm": [0.0, 0.5, 0.5, 0.5, 1.0], "llcm": [1.0, 1.0, 1.0, 1.0, 1.0]},
                "bim_flip_eps_histogram": {"1": 6, "2": 1, "3": 0, "4": 0, "5": 0, ">5": 1},
                "bim_flip_eps_median": 1.0, "bim_flipped_share": 0.875, "bim_max_eps": 5} for m in ("baseline", "robust")}


def test_findings_on_the_papers_numbers_all_hold():
    f = findings(PAPERLIKE, measured=MEASURED)
    assert all(f[k]["holds"] for k in "abcd")
    assert all(f[k]["explanation"] is None for k in "abcd")


def _variant(model, key, values):
    numbers = json.loads(json.dumps(PAPERLIKE))
    numbers[model][key] = values
    return numbers


def test_findings_each_can_fail():
    # (a): the baseline keeps 60% under LLCM at eps 1 (limit 0.5 x 96.7%); the explanation states the
    # measured BIM flip distribution and the FGSM/LLCM agreement at that eps, nothing else
    f = findings(_variant("baseline", "llcm", [0.60, 0.057, 0.052, 0.053, 0.069]), measured=MEASURED)
    assert not f["a"]["holds"] and "LLCM" in f["a"]["detail"]
    assert f["a"]["explanation"] == (
        "BIM-to-flip on 10 test patches (8 correct when clean): flips 75.0% at eps 1, 12.5% at eps 2, 0.0% at eps 3, "
        "0.0% at eps 4, 0.0% at eps 5, 12.5% at eps >5 (smallest flipping eps; '>5': not flipped up to eps 5); "
        "FGSM and LLCM produced identical images on 80.0% of the patches at eps 1; of the 2 patches misclassified "
        "when clean, FGSM made 0.0% and LLCM 100.0% correct")
    assert f["b"]["holds"]
    # without measurements a failing finding carries no explanation at all (nothing canned)
    assert findings(_variant("baseline", "llcm", [0.60, 0.057, 0.052, 0.053, 0.069]))["a"]["explanation"] is None
    # (b): FGSM 2 points above LLCM at eps 3 fails; 1 point is within the stated tolerance
    f = findings(_variant("baseline", "fgsm", [0.028, 0.009, 0.072, 0.006, 0.026]), measured=MEASURED)
    assert not f["b"]["holds"] and "identical images on 70.0% of the patches at eps 3" in f["b"]["explanation"]
    assert findings(_variant("baseline", "fgsm", [0.028, 0.009, 0.061, 0.006, 0.026]))["b"]["holds"]
    # (c): clean drop of 5 points; or recovery below half in one cell
    f = findings(_variant("robust", "clean", 0.917), measured=MEASURED)
    assert not f["c"]["holds"] and "(robust)" in f["c"]["explanation"] and "(-5.0 points)" in f["c"]["detail"]
    f = findings(_variant("robust", "llcm", [0.900, 0.916, 0.40, 0.933, 0.930]))
    assert not f["c"]["holds"] and "LLCM, eps 3" in f["c"]["detail"]
    # (d): the robust model resists LLCM better
    f = findings(_variant("robust", "llcm", [0.95, 0.96, 0.97, 0.97, 0.97]), measured=MEASURED)
    assert not f["d"]["holds"] and "80.0% of the patches at eps 2" in f["d"]["explanation"]


def test_missing_matplotlib_is_one_clear_error(monkeypatch, tmp_path):
    from recapfast.reporting import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plots.PlotError, match=r"pip install matplotlib ") as err:
        plots._pyplot()
    assert "recapfast[" not in str(err.value), "a clone has no recapfast[plot] to install from an index"
    # reproduce checks it before the first stage: nothing is synthesized or trained
    with pytest.raises(plots.PlotError):
        rp.reproduce(tmp_path / "out", tiny_config(), workers=1, log=quiet)
    assert not (tmp_path / "out").exists()


def test_two_class_llcm_equals_fgsm_on_correctly_classified_patches(small_model, batch):
    """The fact the findings' explanations of (b) and (d) rest on: for a two-class detector, LLCM's
    image equals FGSM's wherever the clean prediction is right (and the gradient does not vanish)."""
    import recapfast as rf

    x, y = batch
    with torch.no_grad():
        correct = small_model(x.float()).argmax(1) == y
    same = (rf.fgsm(small_model, x, y, 3) == rf.llcm(small_model, x, y, 3)).flatten(1).all(1)
    assert correct.any() and (~correct).any()
    assert torch.equal(same, correct)


def test_tile_based_training_and_per_size_counts(tmp_path):
    """--train-tile: the train/val images are cut into tiles (no image crosses splits), the models
    train on tiles and the test images are evaluated whole; --count can differ per size."""
    cfg = tiny_config(sizes=(32, 16), count=(12, 10), train_tile=16)
    out = tmp_path / "out"
    rp.reproduce(out, cfg, workers=1, log=quiet, stop_after="32/split")
    lists = json.loads((out / "work" / "32" / "split.json").read_text())
    train_tiles = sorted(p.name for p in (out / "work" / "32" / "split" / "train").rglob("*.png"))
    assert len(train_tiles) == 4 * len(lists["train"])                       # (32 // 16)^2 tiles per image
    stems = {os.path.splitext(os.path.basename(p))[0] for p in lists["train"]}
    assert {t.split("__r")[0] for t in train_tiles} == stems                  # only training images' tiles
    assert all(not p.is_symlink() for p in (out / "work" / "32" / "split" / "train").rglob("*.png"))
    assert len(list((out / "work" / "32" / "split" / "test").rglob("*.png"))) == len(lists["test"])
    result = rp.reproduce(out, cfg, workers=1, log=quiet)
    data = json.loads((out / "results.json").read_text())
    assert data["sizes"]["32"]["training"]["baseline"]["settings"]["size"] == 16
    assert data["sizes"]["32"]["evaluation"]["baseline"]["patches"] == 12     # 6 + 6 test images, whole
    assert data["sizes"]["16"]["data"]["manifest"]["per_class"] == [10, 10]
    assert data["sizes"]["16"]["split"]["train_tiles"] is None                # tile == size: no tiling
    assert "tile-based training" in (out / "report.md").read_text() and result.ran[-1] == "16/figures"
    with pytest.raises(ReproduceError, match="--count"):
        rp.reproduce(tmp_path / "o2", tiny_config(sizes=(32, 16), count=(12, 10, 8)), workers=1, log=quiet)


def test_models_option_evaluates_given_checkpoints(tiny_run, tmp_path):
    """--models: the training stages copy the given checkpoints (nothing is trained) and the report says so."""
    src, _ = tiny_run
    given = tuple(str(src / "work" / "32" / f"{m}.safetensors") for m in ("baseline", "robust"))
    out = tmp_path / "out"
    rp.reproduce(out, tiny_config(models=given), workers=1, log=quiet)
    data = json.loads((out / "results.json").read_text())
    for m, path in zip(("baseline", "robust"), given):
        t = data["sizes"]["32"]["training"][m]
        assert t["trained_here"] is False and t["source"] == path
        assert (out / "work" / "32" / f"{m}.safetensors").read_bytes() == open(path, "rb").read()
    assert "not trained by this run" in (out / "report.md").read_text()
    with pytest.raises(ReproduceError, match="--models"):
        rp.reproduce(tmp_path / "o2", tiny_config(models=given[:1]), workers=1, log=quiet)


def test_scenes_split_by_source_photo_and_tiles_follow_it(tmp_path):
    """--scenes: the data is synthesized from photos and split 40/10/50 by source photo (the synthesizer's split,
    kept as written): no photo's images reach two splits, the train/val tiles come from the train/val images only,
    the report says the split is by photo, and a resume with other scenes is refused."""
    from recapfast.data import scenes

    paths = scenes.sample_photo_paths()
    if len(paths) < 6:
        pytest.skip("scikit-image / scikit-learn sample photos are not installed (pip install '.[test]')")
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in paths:
        (photos / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    cfg = tiny_config(sizes=(32,), count=20, train_tile=16, scenes=(str(photos),))
    out = tmp_path / "out"
    rp.reproduce(out, cfg, workers=1, log=quiet, stop_after="32/split")
    state = json.loads((out / "state.json").read_text())
    data = state["stages"]["32/data"]
    assert data["presplit"] is True and data["generator"] == "recapfast.synth/3.1"
    by_split = data["scenes"]["split_photos"]
    assert sum(map(len, by_split.values())) == len(paths)
    assert not set(by_split["train"]) & set(by_split["test"]) and not set(by_split["val"]) & set(by_split["test"])
    manifest = json.loads((out / "work" / "32" / "data" / "manifest.json").read_text())
    for name in ("train", "val", "test"):     # each image was drawn from its own split's photos only
        assert manifest["splits"][name]["photos"] == by_split[name]
    lists = json.loads((out / "work" / "32" / "split.json").read_text())
    assert {k: len(v) for k, v in lists.items()} == {"train": 16, "val": 4, "test": 20}   # 40/10/50 of 20 + 20
    assert all(p.startswith(k + os.sep) for k, v in lists.items() for p in v)              # kept as written
    tiles = sorted((out / "work" / "32" / "split" / "train").rglob("*.png"))
    train_stems = {(os.path.dirname(p).split(os.sep)[-1], os.path.basename(p)[:-4]) for p in lists["train"]}
    assert len(tiles) == 4 * 16 and {(t.parent.name, t.name.split("__r")[0]) for t in tiles} == train_stems
    test_links = sorted((out / "work" / "32" / "split" / "test").rglob("*.png"))
    assert sorted(os.path.relpath(os.path.realpath(p), out / "work" / "32" / "data") for p in test_links) == \
        sorted(lists["test"])
    with pytest.raises(ReproduceError, match="scenes"):
        rp.reproduce(out, tiny_config(sizes=(32,), count=20, train_tile=16), workers=1, log=quiet)
    with pytest.raises(ReproduceError, match="--scenes and --data"):
        rp.reproduce(tmp_path / "o2", tiny_config(scenes=(str(photos),), data=str(photos)), workers=1, log=quiet)
    rp.reproduce(out, cfg, workers=1, log=quiet)
    report = (out / "report.md").read_text()
    assert "by source photo" in report and f"real photos of {photos}" in report

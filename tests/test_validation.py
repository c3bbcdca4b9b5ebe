"""One validator for eps/step/xi/widths, checkpoint validation before allocation, and the CLI's small rules.

Each test reproduces a case of issue 12 ("Why") and checks the new behaviour: exit code 1 with
one line naming the argument or file, and nothing written or lost.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import recapfast as rf
import recapfast.models.checkpoint as ckpt_mod
from recapfast.models.checkpoint import CheckpointError, load_model
from recapfast.cli import app

from conftest import make_model
from screen_helpers import TINY_WIDTHS, png_bytes, read_jsonl, save_tiny_model, write_labelled

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(res, *needles) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("recapfast: error")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("vmodel") / "m.safetensors")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("vdata") / "data", 3, (40, 48, 3), seed=3, name="{}.png")


# ----------------------------------------------------------------------------- eps, step, xi

@pytest.mark.parametrize("eps", ["nan", "inf", "-inf", "300", "1e308", "0", "-1", "2,,3"])
def test_attack_rejects_bad_eps_and_writes_nothing(model_path, small_data, tmp_path, eps):
    out = tmp_path / "adv"
    res = run("attack", small_data, "--out", out, "--eps", eps, "--model", model_path, "--size", 32, "-q")
    one_error_line(res, "--eps")
    assert not out.exists()


def test_eps_that_rounds_to_no_change_is_refused_consistently(model_path, small_data, tmp_path):
    res = run("attack", small_data, "--out", tmp_path / "a", "--eps", "0.4", "--model", model_path, "-q")
    one_error_line(res, "--eps 0.4", "rounds to no change")
    res = run("attack", small_data, "--out", tmp_path / "a", "--attack", "bim", "--eps", "0.8", "--model", model_path)
    one_error_line(res, "--eps 0.8", "bim")                   # the integer box of an iterative attack is empty
    res = run("eval", small_data, "--eps", "0.4", "--model", model_path, "-q")
    one_error_line(res, "--eps 0.4", "--no-quantize")
    res = run("eval", small_data, "--attack", "bim", "--step-size", "0.4", "--model", model_path, "-q")
    one_error_line(res, "--step-size 0.4")
    res = run("screen", small_data, "--out", tmp_path / "s.jsonl", "--probe-eps", "0.3", "--model", model_path, "-q")
    one_error_line(res, "--probe-eps 0.3", "rounds to no change")
    # unquantized float images: 0.4 grey levels is a real perturbation
    res = run("eval", small_data, "--eps", "0.4", "--no-quantize", "--attack", "fgsm", "--size", 32,
              "--model", model_path, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output


def test_eval_eps_nan_stops_before_the_run(model_path, small_data, tmp_path):
    res = run("eval", small_data, "--eps", "nan", "--model", model_path, "--json", tmp_path / "r.json")
    one_error_line(res, "--eps nan", "finite")
    assert "Clean accuracy" not in res.output and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("args,needle", [
    (("--probe-eps", "inf"), "--probe-eps"),
    (("--probe-eps", "0"), "--probe-eps"),          # 0 no longer silently means "no probing"
    (("--probe-eps", "1,nan"), "--probe-eps"),
    (("--threshold", "nan"), "--threshold"),
    (("--fragile-eps", "inf"), "--fragile-eps"),
])
def test_screen_rejects_bad_numbers(model_path, small_data, tmp_path, args, needle):
    out = tmp_path / "s.jsonl"
    res = run("screen", small_data, "--out", out, "--model", model_path, "--size", 32, *args)
    one_error_line(res, needle)
    assert not out.exists()


def test_probe_eps_none_reports_null_not_zero(model_path, small_data, tmp_path):
    out = tmp_path / "s.jsonl"
    res = run("screen", small_data, "--out", out, "--model", model_path, "--size", 32, "--probe-eps", "none",
              "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["fragile"] is None and summary["settings"]["probe_eps"] == []
    assert all(r["fragile"] is None and r["flip_eps"] is None for r in read_jsonl(out))
    probed = tmp_path / "p.jsonl"
    res = run("screen", small_data, "--out", probed, "--model", model_path, "--size", 32, "--probe-eps", "2",
              "--device", "cpu", "-q")
    assert res.exit_code == 0 and isinstance(json.loads((tmp_path / "p.summary.json").read_text())["fragile"], int)
    assert all(isinstance(r["fragile"], bool) for r in read_jsonl(probed))


@pytest.mark.parametrize("xi", ["nan", "0", "0.5", "128", "inf"])
def test_uap_and_transfer_reject_bad_xi(model_path, small_data, tmp_path, xi):
    res = run("uap", "--model", model_path, "--xi", xi, "--out", tmp_path / "u.png")
    one_error_line(res, "--xi")
    res = run("transfer", small_data, "--source", model_path, "--target", model_path, "--xi", xi)
    one_error_line(res, "--xi")


def test_transfer_rejects_bad_eps(model_path, small_data):
    res = run("transfer", small_data, "--source", model_path, "--target", model_path, "--eps", "inf")
    one_error_line(res, "--eps")


# ----------------------------------------------------------------------------- checkpoints

def legacy_checkpoint(path: Path, state: dict, config) -> Path:
    """A checkpoint the way older recapfast wrote it: no config inside the weights, JSON beside them."""
    save_file(state, str(path), metadata={"format": "recapfast"})
    path.with_suffix(".json").write_text(json.dumps(config))
    return path


def tiny_state():
    return {k: v.clone() for k, v in make_model(0, widths=TINY_WIDTHS).state_dict().items()}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_exit_1_and_write_no_results(small_data, tmp_path, value):
    model = make_model(0, widths=TINY_WIDTHS)
    with torch.no_grad():
        model.units[2].conv.weight[0, 0, 0, 0] = value
    path = rf.save_checkpoint(model, tmp_path / "bad.safetensors")
    res = run("eval", small_data, "--model", path, "--json", tmp_path / "r.json", "--size", 32)
    one_error_line(res, "bad.safetensors", "NaN/Inf")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("config,needle", [
    ({"model": {"widths": [10 ** 9] * 5}}, "1..4096"),
    ({"model": {"widths": [3000] * 5}}, "parameters, above the limit"),
    ({"model": {"widths": [4, -4, 8, 8, 8]}}, "1..4096"),
    ({"model": {"widths": [4, 4, 8, 8]}}, "five integers"),
    ({"model": {"widths": [4, 4, 8, 8, "8"]}}, "five integers"),
    ({"model": {"widths": [4, 4, 8, 8, 8], "num_classes": 3}}, "num_classes"),
    ([1, 2, 3], "JSON object"),
    ({"widths": [4, 4, 8, 8, 8]}, "no \"model\""),
])
def test_bad_configs_are_refused_before_anything_is_allocated(tmp_path, monkeypatch, config, needle):
    path = legacy_checkpoint(tmp_path / "c.safetensors", tiny_state(), config)

    def no_allocation(*a, **k):
        raise AssertionError("a model or the weights were allocated before the config was validated")

    monkeypatch.setattr(ckpt_mod, "LaplacianCNN", no_allocation)
    monkeypatch.setattr("safetensors.torch.load_file", no_allocation)
    with pytest.raises(CheckpointError, match=needle):
        load_model(path)


@pytest.mark.parametrize("dtype,ok", [(torch.int32, False), (torch.float64, False), (torch.uint8, False),
                                       (torch.float16, True), (torch.bfloat16, True)])
def test_weight_dtypes(tmp_path, dtype, ok):
    state = tiny_state()
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    path = legacy_checkpoint(tmp_path / "d.safetensors", state, {"model": {"widths": list(TINY_WIDTHS)}})
    if not ok:
        with pytest.raises(CheckpointError, match="weights must be F32/F16/BF16"):
            load_model(path)
        return
    model = load_model(path)
    assert model.fc.weight.dtype == torch.float32
    assert torch.equal(model.fc.weight, state["fc.weight"].float())


def test_int32_weights_through_the_cli(small_data, tmp_path):
    state = {k: (v.to(torch.int32) if v.is_floating_point() else v) for k, v in tiny_state().items()}
    path = legacy_checkpoint(tmp_path / "i.safetensors", state, {"model": {"widths": list(TINY_WIDTHS)}})
    res = run("eval", small_data, "--model", path, "--size", 32)
    one_error_line(res, "i.safetensors", "I32")


def test_safetensors_header_lies_are_refused(tmp_path):
    good = save_tiny_model(tmp_path / "g.safetensors")
    raw = good.read_bytes()
    for name, data in (("huge_header", (10 ** 12).to_bytes(8, "little") + raw[8:]),
                       ("cut", raw[:-100]), ("extra", raw + b"\0" * 16)):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        bad.with_suffix(".json").write_bytes(good.with_suffix(".json").read_bytes())
        with pytest.raises(CheckpointError):
            load_model(bad)


def test_crash_between_weights_and_config_is_detected_and_recoverable(tmp_path):
    """The weights carry their config: a stale JSON beside new weights is refused, never silently used."""
    path = save_tiny_model(tmp_path / "m.safetensors", seed=0)
    old_json = path.with_suffix(".json").read_bytes()
    rf.save_checkpoint(make_model(1, widths=(4, 4, 4, 8, 8)), path, {"note": "second"})
    path.with_suffix(".json").write_bytes(old_json)      # as if the run died between the two renames
    with pytest.raises(CheckpointError, match="delete m.json to use the stored copy"):
        load_model(path)
    path.with_suffix(".json").unlink()
    assert load_model(path).widths == (4, 4, 4, 8, 8)     # the weights alone are a complete checkpoint


def test_train_force_validates_before_deleting(small_data, tmp_path):
    out = tmp_path / "m.safetensors"
    res = run("train", small_data, "--out", out, "--iters", 2, "--val-every", 1, "--batch-size", 4, "--size", 32,
              "--widths", "4,4,8,8,8", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    files = {p: p.read_bytes() for p in (out, out.with_suffix(".json"), tmp_path / "m.resume.pt")}
    for bad in (("--widths", "1000000000,4,4,4,4"), ("--widths", "3000,3000,3000,3000,3000"), ("--lr", "nan"),
                ("--penalty-mode", "bogus"), ("--adv-count", "99", "--robust"), ("--resume",)):
        res = run("train", small_data, "--out", out, "--iters", 2, "--batch-size", 4, "--size", 32, "--force",
                  "--device", "cpu", "-q", *bad)
        assert res.exit_code == 1, (bad, res.output)
        assert {p: p.read_bytes() for p in files} == files, bad       # nothing deleted or changed


# ----------------------------------------------------------------------------- UAP provenance

def test_any_png_is_not_a_uap(model_path, small_data, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    res = run("eval", small_data, "--model", model_path, "--uap", photo, "--size", 32)
    one_error_line(res, "photo.png", "not a recapfast UAP")
    made = tmp_path / "u.png"
    res = run("uap", "--model", model_path, "--xi", 3, "--out", made, "--iters", 2, "--size", 32, "-q",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = run("eval", small_data, "--model", model_path, "--uap", made, "--size", 32, "--eps", 1, "--device", "cpu")
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------- the small CLI rules

def test_eval_exits_1_when_no_file_could_be_used(model_path, tmp_path):
    root = tmp_path / "broken"
    for label in ("original", "recaptured"):
        (root / label).mkdir(parents=True)
        (root / label / "x.png").write_bytes(b"not an image")
    res = run("eval", root, "--model", model_path, "--json", tmp_path / "r.json")
    one_error_line(res, "no file could be used", "2 skipped")
    assert not (tmp_path / "r.json").exists()


def test_missing_output_folders_are_refused_by_every_command(model_path, small_data, tmp_path):
    missing = tmp_path / "no" / "such"
    cases = [("eval", small_data, "--model", model_path, "--json", missing / "r.json"),
             ("screen", small_data, "--model", model_path, "--out", missing / "r.jsonl"),
             ("attack", small_data, "--model", model_path, "--out", missing / "adv"),
             ("uap", "--model", model_path, "--out", missing / "u.png"),
             ("train", small_data, "--out", missing / "m.safetensors", "--iters", 1),
             ("synth", missing / "data", "--count", 1)]
    for args in cases:
        one_error_line(run(*args), "does not exist", "only the last")
    assert not (tmp_path / "no").exists()


def test_no_arguments_prints_help_and_flags_show_as_flags():
    res = run()
    assert res.exit_code == 0 and "Usage" in res.output and "screen" in res.output
    assert "recapfast: error" not in res.output
    for cmd in ("screen", "attack", "train", "eval", "doctor"):
        text = run(cmd, "--help").output
        assert "--help" in text and "<bool>" not in text, cmd
    assert "--full-size" in run("attack", "--help").output


def test_bench_outside_a_clone_is_one_clear_line(tmp_path, monkeypatch):
    import recapfast.cli.bench as bench_cli

    monkeypatch.setattr(bench_cli, "__file__", str(tmp_path / "site-packages" / "recapfast" / "cli" / "bench.py"))
    monkeypatch.chdir(tmp_path)
    res = run("bench", "--quick")
    one_error_line(res, "not installed with the package", "clone")
    from screen_helpers import REPO

    monkeypatch.chdir(REPO)                       # from a clone's root (after a plain `pip install .`) it is found
    suite = bench_cli._import_bench()
    assert "eval-sweep" in suite.WORKLOADS

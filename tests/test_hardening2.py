"""Hardening, round 2 (issue 21): the newer surfaces fail as one line naming the argument or file, exit 1, no
traceback, nothing lost; or they are handled right."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from recapfast.cli import app

from screen_helpers import cli, save_tiny_model, write_labelled

HUGE = "1180591620717411303424"      # 2**70: beyond int64


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, *needles: str) -> str:
    """The run failed with exit 1 and exactly one ``recapfast: error`` line holding every needle; no traceback."""
    assert res.exit_code == 1, (res.exit_code, res.output[-3000:])
    assert "Traceback" not in res.output, res.output[-3000:]
    lines = [x for x in res.output.splitlines() if x.startswith("recapfast: error")]
    assert len(lines) == 1, res.output[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("h21")
    data = write_labelled(base / "data", 2, shape=(40, 40, 3), seed=3)
    return data, save_tiny_model(base / "tiny.safetensors")


COMMON = ("--size", 32, "--device", "cpu", "-q")


# ---------------------------------------------------------------- 1: seeds beyond int64

@pytest.mark.parametrize("cmd,option", [("eval", "--attack-seed"), ("eval", "--pgd-seed"), ("attack", "--pgd-seed"),
                                        ("attack", "--attack-seed"), ("train", "--seed"), ("uap", "--seed"),
                                        ("synth", "--seed"), ("transfer", "--seed")])
@pytest.mark.parametrize("value", [HUGE, str(2 ** 63), "-1"])
def test_seeds_beyond_int64_are_one_line(setup, tmp_path, cmd, option, value):
    data, model = setup
    args = {"eval": ["eval", data, "--model", model, *COMMON],
            "attack": ["attack", data, "--out", tmp_path / "adv", "--model", model, *COMMON],
            "train": ["train", data, "--out", tmp_path / "m.safetensors", "--iters", 1, "--batch-size", 2,
                      "--widths", "4,4,4,4,4", "--size", 16, "--device", "cpu", "-q"],
            "uap": ["uap", "--model", model, "--out", tmp_path / "u.png", "--iters", 1, "--size", 16, "-q"],
            "synth": ["synth", tmp_path / "s", "--count", 1, "--size", 16, "-q"],
            "transfer": ["transfer", data, "--source", model, "--target", model, "--size", 32, "-q"]}[cmd]
    one_line_error(run(*args, option, value), option)


def test_the_largest_seed_trains(setup, tmp_path):
    data, _ = setup
    res = run("train", data, "--out", tmp_path / "m.safetensors", "--iters", 1, "--val-every", 1, "--batch-size", 2,
              "--widths", "4,4,4,4,4", "--size", 16, "--device", "cpu", "-q", "--seed", 2 ** 63 - 1)
    assert res.exit_code == 0, res.output[-3000:]


# ---------------------------------------------------------------- 3: an empty --jpeg list

@pytest.mark.parametrize("value", [",", "", " , ", "75,", ",,90"])
def test_empty_jpeg_list_is_refused(setup, value):
    data, model = setup
    one_line_error(run("eval", data, "--model", model, "--jpeg", value, *COMMON), "--jpeg")


# ---------------------------------------------------------------- 8: non-finite --mean / --std

@pytest.mark.parametrize("option,value", [("--std", "nan"), ("--std", "1,nan,1"), ("--mean", "inf"),
                                          ("--mean", "-inf,0,0")])
def test_non_finite_mean_std_refused(setup, option, value):
    data, _ = setup
    other = {"--std": ("--mean", "0.5"), "--mean": ("--std", "0.5")}[option]
    one_line_error(run("eval", data, "--model", "h21_models:good", option, value, *other, *COMMON), option)


def test_non_finite_convention_refused_by_the_api():
    from recapfast.models.pixels import InputConvention

    with pytest.raises(ValueError, match="finite"):
        InputConvention(1.0, (float("nan"),), (1.0,)).validate()


# ---------------------------------------------------------------- 5: a factory whose module fails to import

@pytest.mark.parametrize("source,needle", [("raise RuntimeError('boom\\nsecond line')\n", "RuntimeError: boom"),
                                           ("def make(:\n    pass\n", "SyntaxError"),
                                           ("import sys\nsys.exit(3)\n", "SystemExit"),
                                           ("x = 1 / 0\n", "ZeroDivisionError")])
def test_factory_module_failing_on_import_is_one_line(setup, tmp_path, monkeypatch, source, needle):
    data, _ = setup
    name = f"h21_broken_{abs(hash(source)) % 10 ** 8}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(run("eval", data, "--model", f"{name}:make", *COMMON), f"{name}:make", needle)


# ---------------------------------------------------------------- 6, 7: a foreign model's outputs

FACTORIES = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, outputs=2, channels=3, spatial=False, nan_when_bright=False, nan_always=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 4, 3)
        self.fc = nn.Linear(4, outputs)
        self.spatial, self.nan_when_bright, self.nan_always = spatial, nan_when_bright, nan_always

    def forward(self, x):
        h = self.conv(x).relu()
        if self.spatial:
            return h[:, :2]
        z = self.fc(h.mean((2, 3)))
        if self.nan_always:
            return z * float("nan")
        if self.nan_when_bright:
            bright = x.mean((1, 2, 3)) > 150
            z = torch.where(bright.unsqueeze(1), torch.full_like(z, float("nan")), z)
        return z


def good():
    return Net()


def one_logit():
    return Net(outputs=1)


def three():
    return Net(outputs=3)


def spatial():
    return Net(spatial=True)


def grey():
    return Net(channels=1)


def nan():
    return Net(nan_always=True)


def nan_later():
    return Net(nan_when_bright=True)


def returns_tuple_of_nothing():
    class Odd(nn.Module):
        def forward(self, x):
            return ()
    return Odd()
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    import sys

    name = "h21_factories"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("factory,needle", [("three", "(2, 3)"), ("spatial", "[B, 2]"), ("grey", "fails on a"),
                                            ("nan", "non-finite"), ("returns_tuple_of_nothing", "[B, 2]")])
@pytest.mark.parametrize("cmd", ["eval", "attack", "screen"])
def test_bad_model_outputs_are_one_line(setup, tmp_path, factories, factory, needle, cmd):
    data, _ = setup
    extra = {"eval": [], "attack": ["--out", tmp_path / "adv"], "screen": ["--out", tmp_path / "r.jsonl"]}[cmd]
    one_line_error(run(cmd, data, "--model", f"{factories}:{factory}", *extra, *COMMON),
                   f"--model {factories}:{factory}", needle)
    assert not (tmp_path / "adv").exists() and not (tmp_path / "r.jsonl").exists()


def test_one_logit_and_two_logit_factories_run(setup, factories):
    data, _ = setup
    for factory in ("good", "one_logit"):
        res = run("eval", data, "--model", f"{factories}:{factory}", *COMMON)
        assert res.exit_code == 0, res.output[-3000:]


def test_first_batch_checked_in_the_engine(setup, factories):
    """The library path (no CLI probe) checks the first real batch too."""
    import importlib

    from recapfast.engine.evaluate import evaluate_folder
    from recapfast.models.pixels import InputAdapter, InputConvention, ModelOutputError

    data, _ = setup
    module = importlib.import_module(factories)
    for factory in ("three", "nan", "grey"):
        net = InputAdapter(getattr(module, factory)(), InputConvention()).eval()
        with pytest.raises(ModelOutputError):
            evaluate_folder(net, data, [2], ["fgsm"], size=32, batch_size=2, model_name=factory)


def test_nan_logits_later_are_counted_not_accuracies(tmp_path, factories):
    import numpy as np

    from screen_helpers import png_bytes

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label, lows in (("original", (0, 0)), ("recaptured", (0, 200))):
        (data / label).mkdir(parents=True)
        for i, low in enumerate(lows):      # the bright file (low 200) comes in the second batch
            arr = rng.integers(low, low + 56, (40, 40, 3), dtype=np.uint8)
            (data / label / f"{i}.png").write_bytes(png_bytes(arr))
    out = tmp_path / "e.json"
    res = run("eval", data, "--model", f"{factories}:nan_later", "--batch-size", 2, "--eps", "2",
              "--attack", "fgsm,apgd", "--apgd-steps", 2, "--jpeg", 80, "--json", out, "--csv", tmp_path / "e.csv",
              *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    result = json.loads(out.read_text())
    assert result["nonfinite"] == 1 and result["patches"] == 3 and result["files"] == 4
    assert sum(result["patches_per_class"]) == 3
    assert "1 patch(es) got NaN or Inf logits" in res.output
    assert "nan" not in json.dumps(result["detection"]["clean"]).lower()


def test_nonfinite_is_summed_across_ranks(small_model):
    from recapfast import distributed
    from recapfast.engine.evaluate import Evaluator

    evaluator = Evaluator(small_model, [2], ["fgsm"])
    assert "nonfinite" in Evaluator.SUMMED
    assert any(t is evaluator.nonfinite for t in distributed.summed_counters(evaluator))


# ---------------------------------------------------------------- 9: devices torch cannot run here

@pytest.mark.parametrize("device", ["mps", "meta", "xla", "ipu:0", "cuda:99"])
@pytest.mark.parametrize("cmd", ["eval", "attack", "screen", "train", "transfer", "uap"])
def test_unusable_device_is_one_line(setup, tmp_path, cmd, device):
    data, model = setup
    args = {"eval": ["eval", data, "--model", model],
            "attack": ["attack", data, "--out", tmp_path / "adv", "--model", model],
            "screen": ["screen", data, "--out", tmp_path / "r.jsonl", "--model", model],
            "train": ["train", data, "--out", tmp_path / "m.safetensors", "--iters", 1, "--batch-size", 2,
                      "--widths", "4,4,4,4,4"],
            "transfer": ["transfer", data, "--source", model, "--target", model],
            "uap": ["uap", "--model", model, "--out", tmp_path / "u.png", "--iters", 1]}[cmd]
    one_line_error(run(*args, "--size", 16 if cmd in ("train", "uap") else 32, "-q", "--device", device), "--device")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- 17: lock paths of '.', '..' and their spellings

def test_lock_path_of_dot_and_dotdot(tmp_path, monkeypatch):
    from recapfast.io.lock import lock_outputs, lock_path
    from recapfast.io.atomic import OutputError

    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert lock_path(".") == lock_path(work) == tmp_path / "work" / ".sub.lock"
    assert lock_path("..") == lock_path(tmp_path / "work") == lock_path("../sub/..") == tmp_path / ".work.lock"
    assert lock_path("out.json") == lock_path(work / "out.json") == work / ".out.json.lock"
    with lock_outputs(".", work):               # one output spelt twice: one lock
        with pytest.raises(OutputError, match="another recapfast process"):
            lock_outputs(work)
    with lock_outputs(".."):
        with pytest.raises(OutputError, match="another recapfast process"):
            lock_outputs(tmp_path / "work")


def test_attack_into_dot_with_input_dotdot(setup, tmp_path, monkeypatch):
    import shutil

    data, model = setup
    shutil.copytree(data, tmp_path / "d")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    res = run("attack", "../d", "--out", ".", "--force", "--model", model, *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    assert (tmp_path / "work" / "manifest.json").is_file() and (tmp_path / ".work.lock").is_file()


# ---------------------------------------------------------------- 10: one class: CSV empty where JSON is null

def test_single_class_csv_has_no_nan(setup, tmp_path):
    import csv
    import shutil

    data, model = setup
    one = tmp_path / "one"
    shutil.copytree(data / "original", one / "original")
    res = run("eval", one, "--model", model, "--eps", "1,2", "--attack", "fgsm,apgd", "--apgd-steps", 2,
              "--json", tmp_path / "e.json", "--csv", tmp_path / "e.csv", *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    text = (tmp_path / "e.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert not [v for r in rows for v in r.values() if v.lower() in ("nan", "inf", "-inf")], text
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["detection"]["clean"]["auc"] is None
    clean = next(r for r in rows if r["attack"] == "clean")
    assert clean["auc"] == "" and clean["eer"] == "" and float(clean["accuracy"]) >= 0


# ---------------------------------------------------------------- 11: --init with --arch / --widths

TRAIN = ("--iters", 1, "--val-every", 1, "--batch-size", 2, "--size", 16, "--device", "cpu", "-q")


@pytest.mark.parametrize("extra,needle", [(("--arch", "bayar"), "--arch bayar"), (("--arch", "meso4"), "--arch meso4"),
                                          (("--widths", "4,4,4,4,8"), "--widths 4,4,4,4,8")])
def test_init_with_another_arch_or_widths_is_refused(setup, tmp_path, extra, needle):
    data, model = setup                      # model: a laplacian checkpoint with widths 4,4,8,8,8
    one_line_error(run("train", data, "--out", tmp_path / "m.safetensors", "--init", model, *extra, *TRAIN),
                   needle, "--init")
    one_line_error(run("train", data, "--out", tmp_path / "m.safetensors", "--init", "baseline", *extra, *TRAIN),
                   needle, "--init baseline")
    assert not (tmp_path / "m.safetensors").exists()


def test_init_with_its_own_arch_and_widths_trains(setup, tmp_path):
    data, model = setup
    res = run("train", data, "--out", tmp_path / "m.safetensors", "--init", model, "--arch", "laplacian",
              "--widths", "4,4,8,8,8", *TRAIN)
    assert res.exit_code == 0, res.output[-3000:]
    config = json.loads((tmp_path / "m.json").read_text())
    assert config["model"]["widths"] == [4, 4, 8, 8, 8]


def test_library_refuses_init_of_another_arch(setup, tmp_path):
    from recapfast.data.folder import DataError
    from recapfast.training.train import TrainConfig, train

    data, model = setup
    with pytest.raises(DataError, match="not --arch bayar"):
        train(data, tmp_path / "m.safetensors", TrainConfig(iters=1, batch_size=2, size=16, arch="bayar",
                                                            widths=(3, 24, 16, 16, 32, 64), init=str(model)))


def test_first_batch_check_leaves_batchnorm_alone(small_model):
    import torch

    from recapfast.models.pixels import check_logits

    small_model.train()
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    check_logits(small_model, torch.full((2, 3, 32, 32), 200.0), "m")
    assert small_model.training
    assert all(torch.equal(before[k], v) for k, v in small_model.state_dict().items())


# ---------------------------------------------------------------- 12: symlink loops in an input folder

@pytest.fixture
def looped(setup, tmp_path):
    import os
    import shutil

    data, _ = setup
    root = tmp_path / "looped"
    shutil.copytree(data, root)
    os.symlink("x.png", root / "original" / "x.png")                   # original/x.png -> x.png
    os.symlink(root / "recaptured" / "b.png", root / "recaptured" / "a.png")
    os.symlink(root / "recaptured" / "a.png", root / "recaptured" / "b.png")
    return root


def test_symlink_loop_is_a_per_file_record_in_eval(setup, looped, tmp_path):
    _, model = setup
    res = run("eval", looped, "--model", model, "--json", tmp_path / "e.json", *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["files"] == 4
    errors = {e["path"].rsplit("/", 1)[1]: e["error"] for e in result["errors"]}
    assert errors == {"x.png": "symbolic link loop", "a.png": "symbolic link loop", "b.png": "symbolic link loop"}


def test_symlink_loop_is_a_per_file_record_in_attack(setup, looped, tmp_path):
    _, model = setup
    res = run("attack", looped, "--out", tmp_path / "adv", "--model", model, *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    assert "3 skipped" in res.output and len(list((tmp_path / "adv").rglob("*.png"))) == 4


def test_symlink_loop_in_discovery(looped):
    from recapfast.data.folder import discover

    names = sorted(s.path.rsplit("/", 1)[1] for s in discover(looped))
    assert names == ["000000.png", "000000.png", "000001.png", "000001.png", "a.png", "b.png", "x.png"]


# ---------------------------------------------------------------- 16: --heatmap inside the labelled input folder

@pytest.mark.parametrize("where", ["original/maps", "maps", ".", "recaptured"])
def test_heatmap_inside_the_input_is_refused(setup, tmp_path, where):
    import shutil

    data, model = setup
    root = tmp_path / "d"
    shutil.copytree(data, root)
    one_line_error(run("eval", root, "--model", model, "--heatmap", root / where, "--tile", *COMMON),
                   "--heatmap", "inside the input folder")
    assert sorted(p.name for p in root.rglob("*")) == sorted(p.name for p in data.rglob("*"))


def test_heatmap_beside_the_input_is_fine(setup, tmp_path):
    data, model = setup
    res = run("eval", data, "--model", model, "--heatmap", tmp_path / "maps", "--size", 16, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output[-3000:]
    assert (tmp_path / "maps" / "heatmaps.json").is_file()


# ---------------------------------------------------------------- 13: outputs that collide

@pytest.mark.parametrize("outputs,needle", [
    (("--out", "r.jsonl", "--csv", "r.jsonl"), "--csv r.jsonl and --out r.jsonl"),
    (("--out", "r.jsonl", "--csv", "r.summary.json"), "--csv r.summary.json and the summary file of --out r.jsonl"),
    (("--out", "r.jsonl", "--html", "r.summary.json"), "--html r.summary.json"),
    (("--out", "r.jsonl", "--csv", "r.tiles"), "--csv r.tiles and the tile-map folder of --out r.jsonl"),
    (("--out", "r.jsonl", "--csv", "x.csv", "--html", "sub/../x.csv"), "--html sub/../x.csv and --csv x.csv"),
    (("--out", "r.jsonl", "--html", "ABS/r.jsonl"), "and --out r.jsonl"),
])
def test_screen_output_collisions_refused_up_front(setup, tmp_path, monkeypatch, outputs, needle):
    data, model = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "r.jsonl").write_text("keep\n")
    res = run("screen", data, "--model", model, "--resume",
              *[str(tmp_path) + o[3:] if o.startswith("ABS/") else o for o in outputs], *COMMON)
    one_line_error(res, needle)
    assert (tmp_path / "r.jsonl").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "sub"]


@pytest.mark.parametrize("outputs,needle", [
    (("--json", "e.json", "--csv", "e.json"), "--csv e.json and --json e.json"),
    (("--md", "e.md", "--html", "./e.md"), "--html e.md and --md e.md"),
    (("--json", "maps/heatmaps.json", "--heatmap", "maps"), "the index of --heatmap maps"),
])
def test_eval_output_collisions_refused_up_front(setup, tmp_path, monkeypatch, outputs, needle):
    data, model = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maps").mkdir()
    one_line_error(run("eval", data, "--model", model, *outputs, *COMMON), needle)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["maps"]


def test_transfer_output_collision(setup, tmp_path):
    data, model = setup
    one_line_error(run("transfer", data, "--source", model, "--target", model, "--json", tmp_path / "t",
                       "--md", tmp_path / "t", "--size", 32, "-q"), "--md", "--json")


# ---------------------------------------------------------------- 14: screen --resume checks the recorded settings

@pytest.fixture
def screened(setup, tmp_path):
    data, model = setup
    out = tmp_path / "r.jsonl"
    res = run("screen", data, "--out", out, "--model", model, "--probe-eps", "1,2", "--batch-size", 2, *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    return out


def test_screen_records_its_settings_in_the_first_record(setup, screened):
    _, model = setup
    records = [json.loads(line) for line in screened.read_text().splitlines()]
    assert records[0]["settings"]["model"] == str(model)
    assert records[0]["settings"]["probe_eps"] == [1.0, 2.0] and len(records[0]["settings"]["model_sha256"]) == 64
    assert all("settings" not in r for r in records[1:])


@pytest.mark.parametrize("change,needle", [(("--model", "OTHER"), "model"),
                                           (("--probe-eps", "1,3"), "probe_eps"), (("--threshold", "0.7"), "threshold"),
                                           (("--size", "16"), "size"), (("--probe-eps", "none"), "probe_eps")])
def test_screen_resume_with_other_settings_is_refused(setup, screened, tmp_path, change, needle):
    from screen_helpers import save_tiny_model

    data, model = setup
    before = screened.read_bytes()
    (tmp_path / "other").mkdir()
    other = {"OTHER": save_tiny_model(tmp_path / "other" / "o.safetensors", seed=5)}
    option, value = change
    value = other.get(value, value)
    args = {"--model": model, "--probe-eps": "1,2", "--size": 32, "--threshold": 0.5}
    args[option] = value
    flat = [x for kv in args.items() for x in kv]
    screened.write_bytes(b"\n".join(before.splitlines()[:2]) + b"\n")       # a run killed after two records
    kept = screened.read_bytes()
    one_line_error(run("screen", data, "--out", screened, "--resume", *flat, "--device", "cpu", "-q"), "--resume",
                   needle)
    assert screened.read_bytes() == kept


def test_screen_resume_with_the_same_settings_continues(setup, screened):
    data, model = setup
    lines = screened.read_bytes().splitlines()
    screened.write_bytes(b"\n".join(lines[:2]) + b"\n")
    res = run("screen", data, "--out", screened, "--resume", "--model", model, "--probe-eps", "2,1", *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    assert len(screened.read_bytes().splitlines()) == len(lines)


def test_screen_resume_with_retrained_weights_at_the_same_path_is_refused(setup, tmp_path):
    from screen_helpers import save_tiny_model

    data, _ = setup
    model = save_tiny_model(tmp_path / "m.safetensors")
    out = tmp_path / "r.jsonl"
    assert run("screen", data, "--out", out, "--model", model, *COMMON).exit_code == 0
    out.write_bytes(out.read_bytes().splitlines()[0] + b"\n")
    save_tiny_model(tmp_path / "m.safetensors", seed=5)
    line = one_line_error(run("screen", data, "--out", out, "--resume", "--model", model, *COMMON), "--resume",
                          "the model's weights")
    assert "model '" not in line


# ---------------------------------------------------------------- 4: a zero-byte or garbage .pt2

@pytest.mark.parametrize("content", [b"", b"garbage" * 40, b"PK\x03\x04" + b"\x00" * 60])
def test_bad_pt2_is_only_recapfasts_line(setup, tmp_path, content):
    data, _ = setup
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(content)
    res = cli("eval", data, "--model", bad, *COMMON)
    assert res.returncode == 1, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("recapfast: error: ") and str(bad) in lines[0], res.stderr
    verbose = cli("eval", data, "--model", bad, "--verbose", *COMMON)
    assert verbose.returncode == 1 and "Traceback" not in verbose.stderr.splitlines()[-1]
    assert verbose.stderr.splitlines()[-1].startswith("recapfast: error: ")
    if content == b"":
        assert "torch said while loading" in verbose.stderr and "PytorchStreamReader" in verbose.stderr


def test_captured_torch_output_restores_the_streams(capfd):
    import logging
    import sys

    from recapfast.models.zoo import captured_torch_output

    err, handlers = sys.stderr, logging.getLogger("torch").handlers[:]
    said: list = []
    with captured_torch_output(said):
        logging.getLogger("torch.export").warning("noise from torch")
        sys.stderr.write("python noise\n")
        import os

        os.write(2, b"c++ noise\n")
    assert sys.stderr is err and logging.getLogger("torch").handlers == handlers
    assert "noise from torch" in said[0] and "python noise" in said[0] and "c++ noise" in said[0]
    assert "noise" not in capfd.readouterr().err


# ---------------------------------------------------------------- 2: thousands of eps: linear cost

def test_masking_comparisons_grow_linearly_with_the_eps():
    from recapfast.engine.masking import EPS_WINDOW, masking_checks

    def comparisons(n_eps: int) -> int:
        eps = [1.0 + i for i in range(n_eps)]
        accuracy = {("clean", 0.0): 0.9, **{("fgsm", e): 0.5 for e in eps}, **{("bim", e): 0.4 for e in eps}}
        out = masking_checks(["fgsm", "bim"], eps, 100, accuracy, _AllZero(), None)
        return out["multiplicity"]["comparisons"]

    c50, c100, c200 = comparisons(50), comparisons(100), comparisons(200)
    assert c200 - c100 == 2 * (c100 - c50)                                 # linear (quadratic: 6x)
    assert c100 - c50 == 50 * (1 + 2 * (1 + EPS_WINDOW))                  # fgsm-bim per eps; clean + window each
    assert comparisons(EPS_WINDOW + 1) == (EPS_WINDOW + 1) * (1 + 2) + 2 * (EPS_WINDOW + 1) * EPS_WINDOW // 2


class _AllZero(dict):
    """Discordant counts that are all zero: only the number of comparisons matters here."""

    def __missing__(self, key):
        return 0


def test_a_thousand_eps_on_two_images_under_a_memory_cap(tmp_path):
    """The old all-pairs counters and dict needed about 800 MB here (and 15 GB for 10000 eps); now under 400."""
    import os
    import resource
    import subprocess
    import sys

    import numpy as np

    from screen_helpers import env, png_bytes

    if not hasattr(resource, "RLIMIT_DATA"):
        pytest.skip("no RLIMIT_DATA here")
    data = tmp_path / "d"
    rng = np.random.default_rng(0)
    for label in ("original", "recaptured"):
        (data / label).mkdir(parents=True)
        (data / label / "a.png").write_bytes(png_bytes(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)))
    cap = 600 << 20

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    eps = ",".join(f"{1 + i * 0.25:g}" for i in range(1000))
    out = tmp_path / "e.json"
    res = subprocess.run([sys.executable, "-m", "recapfast", "eval", data, "--eps", eps, "--metrics", "none",
                          "--device", "cpu", "-q", "--json", out], preexec_fn=limit, capture_output=True, text=True,
                         env=env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["cells"]) == 2000 and result["masking"]["multiplicity"]["comparisons"] < 30_000
    assert os.path.getsize(out) < 50 << 20


# ---------------------------------------------------------------- 15: a 250-character file name

@pytest.fixture
def long_named(setup, tmp_path):
    import shutil

    import numpy as np

    from screen_helpers import jpeg_bytes, png_bytes

    data, _ = setup
    root = tmp_path / "long"
    shutil.copytree(data, root)
    rng = np.random.default_rng(1)
    long_png = "p" * 246 + ".png"                       # 250 characters
    long_jpg = "j" * 246 + ".jpg"
    (root / "original" / long_png).write_bytes(png_bytes(rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)))
    (root / "recaptured" / long_jpg).write_bytes(jpeg_bytes(rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)))
    return root, long_png, long_jpg


def test_long_names_eval_tile_heatmap(setup, long_named, tmp_path):
    _, model = setup
    root, long_png, long_jpg = long_named
    res = run("eval", root, "--model", model, "--tile", "--heatmap", tmp_path / "maps", *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    index = json.loads((tmp_path / "maps" / "heatmaps.json").read_text())
    written = {r["path"].rsplit("/", 1)[1]: r["heatmap"] for r in index["images"]}
    for name in (long_png, long_jpg):
        heatmap = written[name]
        assert heatmap is not None and len(heatmap.rsplit("/", 1)[1].encode()) <= 255
        assert heatmap.endswith(".heatmap.png") and "~" in heatmap and (tmp_path / "maps" / heatmap).is_file()


@pytest.mark.parametrize("mode", ["--tile", "--full-size", None])
def test_long_names_attack(setup, long_named, tmp_path, mode):
    _, model = setup
    root, long_png, long_jpg = long_named
    out = tmp_path / "adv"
    res = run("attack", root, "--out", out, "--model", model, *([mode] if mode else []), *COMMON)
    assert res.exit_code == 0, res.output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["errors"] and manifest["files"] == 6
    outputs = {e["source"].rsplit("/", 1)[1]: e["outputs"] for e in manifest["written"]}
    for name in (long_png, long_jpg):
        assert outputs[name] and all((out / o).is_file() and len(o.rsplit("/", 1)[1].encode()) <= 255
                                     for o in outputs[name])
    assert len({o for names in outputs.values() for o in names}) == sum(len(v) for v in outputs.values())


def test_fit_name():
    from recapfast.io.atomic import fit_name

    assert fit_name("x", ".png") == "x.png"
    for suffix in ("_r000_c001.png", ".heatmap.png", ".png", ".jpg.png"):
        a, b = fit_name("é" * 200 + "a", suffix), fit_name("é" * 200 + "b", suffix)
        assert a != b and len(a.encode()) <= 255 and a.endswith(suffix)
        a.encode("utf-8")                   # never a split character


# ---------------------------------------------------------------- found by the CLI fuzz: sizes beyond any use

@pytest.mark.parametrize("option", ["--batch-size", "--size", "--workers"])
def test_huge_size_options_are_one_line(setup, option):
    data, model = setup
    one_line_error(run("eval", data, "--model", model, "--device", "cpu", "-q", option, HUGE), option)

"""Hardening, round 2 (issue 21): the newer surfaces fail as one line naming the argument or file, exit 1, no
traceback, nothing lost; or they are handled right."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from recapfast.cli import app

from screen_helpers import save_tiny_model, write_labelled

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

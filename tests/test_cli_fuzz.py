"""A hypothesis fuzz of every command's options (derandomized: the same examples in every run; issue 21).

Each example takes one command with cheap base arguments (tiny data, --size 16, one iteration) and sets up
to four of its options - read from the Typer app itself, so a new option is fuzzed without touching this
file - to hostile values chosen by the option's type and name: seeds beyond int64, empty and broken lists,
NaN and Inf, devices torch cannot run here, missing or foreign models, and output paths that collide with
each other or sit inside the input folder.  Whatever happens: exit code 0 or 1, exactly one
``recapfast: error`` line on failure, never a traceback.  The commands whose real work takes minutes
(``reproduce``, ``bench``) run with that work replaced after their options are checked.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from recapfast.cli import app

from screen_helpers import png_bytes, save_tiny_model

HUGE = "1180591620717411303424"          # 2**70
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=160,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
COMMAND = typer.main.get_command(app)
SIZE_LIKE = ("batch_size", "workers", "size", "threads", "max_pixels", "rows", "tile_map_inline", "limit")
LISTS = ("eps", "xi", "probe_eps", "jpeg", "widths", "mean", "std", "sizes", "split", "count", "only", "threads",
         "contenders", "models")


def options(name: str) -> list:
    """(parameter name, option string, is_flag, kind) of every option of command ``name`` (``--help`` aside)."""
    out = []
    for p in COMMAND.commands[name].params:
        if p.param_type_name != "option" or p.name == "help":
            continue
        kind = str(p.type_descriptor.annotation).lower()       # "<class 'int'>", "typing.optional[pathlib.path]"
        flag = "bool" in kind
        for opt in [max(p.opts, key=len)] + (list(p.secondary_opts) if flag else []):
            out.append((p.name, opt, flag, kind))
    return out


def values(param: str, kind: str) -> st.SearchStrategy:
    """Hostile and ordinary values for one option, by its name and type."""
    if "seed" in param:
        return st.sampled_from([HUGE, str(2 ** 63), "-1", "0", str(2 ** 63 - 1), "x"])
    if param == "device":
        return st.sampled_from(["mps", "meta", "xla", "cuda:9", "", "cpu", "auto", "CPU"])
    if param in ("model", "source", "target", "init"):
        return st.sampled_from(["MODEL", "MISSING.safetensors", "EMPTY.pt2", "GARBAGE.pt2", "os:getcwd",
                                "no_such_pkg.mod:make", "", "baseline", "MODEL,MODEL"])
    if kind == "path" or param in ("out", "json_out", "csv_out", "md_out", "html_out", "heatmap", "data", "val",
                                   "scenes", "notes", "uap", "weights", "folder"):
        return st.sampled_from(["OUT/a", "OUT/a", "OUT/a.summary.json", "OUT/a.tiles", "DATA/original/x",
                                "OUT/no/such/x", "OUT/../OUT/a", "DATA", "EMPTY.pt2", "OUT"])
    if param in LISTS:
        return st.sampled_from(["", ",", " , ", "1,,2", "nan", "inf,1", "0", "1", "2,3", "-1", "1e400", "x",
                                "0.5", "4,4,4,4,4", "75", HUGE])
    if "int" in kind and "pathlib" not in kind:
        return st.sampled_from(["-1", "0", "1", "2", "nan", "", "1.5", "x"] + ([HUGE] if param in SIZE_LIKE else []))
    if "float" in kind:
        return st.sampled_from(["nan", "inf", "-inf", "-1", "0", "0.5", "1", "1e308", "", "x"])
    if param == "attack":
        return st.sampled_from(["fgsm", "apgd", "auto", "", ",", "cw", "square", "pgd,llcm"])
    return st.sampled_from(["", "x", ",", "nan", "1", "auto", "none", "stat", "sha256", "bayar", "fd", "v2"])


BASE = {
    "eval": ["DATA", "--model", "MODEL", "--size", 16, "--eps", 2, "--metrics", "none", "--apgd-steps", 2,
             "--square-queries", 5],
    "attack": ["DATA", "--out", "OUT/adv", "--model", "MODEL", "--size", 16, "--apgd-steps", 2,
               "--square-queries", 5],
    "screen": ["DATA", "--out", "OUT/r.jsonl", "--model", "MODEL", "--size", 16, "--probe-eps", 1],
    "transfer": ["DATA", "--source", "MODEL", "--target", "MODEL", "--size", 16, "--uap-iters", 1, "--apgd-steps", 2,
                 "--square-queries", 5],
    "uap": ["--model", "MODEL", "--out", "OUT/u.png", "--iters", 1, "--size", 16],
    "train": ["DATA", "--out", "OUT/m.safetensors", "--iters", 1, "--batch-size", 2, "--widths", "4,4,4,4,4",
              "--size", 16, "--val-every", 1],
    "synth": ["OUT/s", "--count", 1, "--size", 16],
    "demo": ["--count", 1],
    "reproduce": ["OUT/rep"],
    "bench": [],
    "doctor": ["--no-build"],
}
WORK_SIZE = {"count": ["1", "2"], "iters": ["0", "1", "2"], "uap_iters": ["1"], "steps": ["1", "2"],
             "apgd_steps": ["1", "2"], "square_queries": ["1", "5"], "limit": ["1", "2"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("clifuzz")
    data = base / "data"
    rng = np.random.default_rng(21)
    for label in ("original", "recaptured"):
        (data / label).mkdir(parents=True)
        for i in range(2):
            (data / label / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)))
    (base / "EMPTY.pt2").write_bytes(b"")
    (base / "GARBAGE.pt2").write_bytes(b"garbage" * 30)
    return base, data, save_tiny_model(base / "m.safetensors")


@pytest.fixture
def no_long_work(monkeypatch):
    """reproduce and bench check their options, then skip the minutes of work."""
    import recapfast.reproduction.run as repro

    class Done:
        report = "reproduce: skipped in the fuzz test"

    monkeypatch.setattr(repro, "reproduce", lambda *a, **k: Done())
    from recapfast.cli import bench as bench_cli

    suite = bench_cli._import_bench()

    def run_suite(mode, only, threads, model, out, contenders, sizes=None):
        suite.check_options(only, threads)
        md = Path(tempfile.mkdtemp()) / "r.json"
        md.with_suffix(".md").write_text("bench: skipped in the fuzz test\n")
        return {}, md

    monkeypatch.setattr(suite, "run_suite", run_suite)


def concrete(arg, base: Path, data: Path, model: Path, out: Path) -> str:
    text = str(arg)
    for word, real in (("MODEL", str(model)), ("DATA", str(data)), ("OUT", str(out)), ("EMPTY.pt2", str(base / "EMPTY.pt2")),
                       ("GARBAGE.pt2", str(base / "GARBAGE.pt2"))):
        text = text.replace(word, real)
    return text


def check(args: list) -> None:
    res = CliRunner().invoke(app, args)
    shown = f"{args}\n{res.output[-3000:]}"
    assert res.exit_code in (0, 1), shown
    assert "Traceback" not in res.output, shown
    if res.exit_code == 1:
        assert len([x for x in res.output.splitlines() if x.startswith("recapfast: error")]) == 1, shown


@pytest.mark.parametrize("group", [("eval", "attack", "screen"), ("transfer", "uap", "train", "synth"),
                                   ("reproduce", "bench", "doctor", "demo")])
def test_every_commands_options_fail_as_one_line(world, no_long_work, monkeypatch, group):
    base, data, model = world
    monkeypatch.setenv("RECAPFAST_BACKEND", "torch")

    @FUZZ
    @given(st.data())
    def run(draw):
        name = draw.draw(st.sampled_from(group), label="command")
        chosen = draw.draw(st.lists(st.sampled_from(options(name)), max_size=4, unique_by=lambda o: o[0]),
                           label="options")
        args = list(BASE[name])
        for param, opt, flag, kind in chosen:
            if flag:
                args.append(opt)
            else:
                pool = st.sampled_from(WORK_SIZE[param]) if param in WORK_SIZE else values(param, kind)
                args += [opt, draw.draw(pool, label=opt)]
        if name not in ("bench", "doctor") and not any(o == "--device" for _, o, _, _ in chosen):
            args += ["--device", "cpu"]
        if name not in ("bench", "doctor"):
            args.append("-q")
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            out = Path(tmp)
            old = os.getcwd()
            os.chdir(out)
            try:
                check([name] + [concrete(a, base, data, model, out) for a in args])
            finally:
                os.chdir(old)

    run()

"""The benchmark suite's machinery (tiny sizes; peers optional; no timing asserted) and the README's figures."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

bench_main = pytest.importorskip("bench.__main__")
from bench import peers, readme  # noqa: E402

TINY = {"sizes": (32,), "counts": {32: 8}, "batch": {32: 4}, "reps": 1, "scaling_reps": 1, "scaling_batch": 4,
        "scaling_args": {"size": 32, "count": 4, "counts": (1, 2)}, "train_reps": 1,
        "train_args": {"batch": 4, "size": 32, "count": 4}, "robust_iters": 1,
        "robust_args": {"batch": 4, "size": 32, "train_count": 4, "eval_count": 4},
        "screen_reps": 1, "screen_count": 2, "screen_args": {"size": 32, "tile": 16}, "floor_sizes": (32,),
        "floor_reps": 1, "pipeline": {32: (4, 2024)}, "kernel_sizes": (), "kernel_reps": 1}


@pytest.fixture
def tiny_suite(tmp_path, monkeypatch):
    from recapfast.models.checkpoint import save_checkpoint

    monkeypatch.setenv("RECAPFAST_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_main, "plan", lambda mode: TINY)
    model_path = tmp_path / "tiny.safetensors"
    save_checkpoint(make_model(), model_path)
    return tmp_path, model_path


def test_suite_writes_results_and_reports_missing_peers(tiny_suite, monkeypatch):
    tmp_path, model_path = tiny_suite
    real_probe = peers._probe
    # foolbox is made to look absent: it must be reported as missing with the install command.
    monkeypatch.setattr(peers, "_probe", lambda m: (None, "ModuleNotFoundError: test") if m == "foolbox"
                        else real_probe(m))
    names = ["recapfast-torch", "skilled", "foolbox"] + (["torchattacks"] if importlib.util.find_spec("torchattacks")
                                                          else [])
    from recapfast import ops

    backend_before, threads_before = ops._requested, torch.get_num_threads()
    results, path = bench_main.run_suite("quick", ["eval-sweep", "scaling", "train-step", "screen-probe", "floor",
                                                   "data-pipeline"],
                                         threads=[1, 2], model_path=str(model_path), out_dir=tmp_path / "out",
                                         contender_names=names, stamp=False)
    # every contender restored the process's op backend and thread count
    assert (ops._requested, torch.get_num_threads()) == (backend_before, threads_before)
    saved = json.loads(path.read_text())
    md = path.with_suffix(".md").read_text()
    status = {c["name"]: c["status"] for c in saved["contenders"]}
    assert status["foolbox"] == "missing" and "missing" in md and "pip install --no-deps" in md
    runs = saved["workloads"]["eval_sweep"]["runs"]
    assert [r["threads"] for r in runs] == [1, 2]
    sweep = runs[0]["sizes"][0]
    ok = {n for n in names if status[n] == "ok"}
    assert {r["contender"] for r in sweep["modes"]["model-only"]} == ok
    assert {r["contender"] for r in sweep["modes"]["end-to-end"]} == ok
    assert sweep["images"] == 8
    for row in sweep["modes"]["model-only"]:
        assert len(row["cpu_all"]) == len(row["wall_all"]) == 1 and row["cpu_s"] > 0 and row["wall_s"] > 0
        assert row["vs_skilled"] == pytest.approx(
            next(r["cpu_s"] for r in sweep["modes"]["model-only"] if r["contender"] == "skilled") / row["cpu_s"],
            abs=0.01)
    agree = {a["contender"]: a for a in sweep["agreement"]}
    assert agree["skilled"]["fgsm_identical"], agree["skilled"]      # the 20-liner computes the same attack
    if "torchattacks" in status:
        assert agree["torchattacks"]["fgsm_identical"], agree["torchattacks"]
        assert sweep["modes"]["end-to-end"][0]["vs_torchattacks"] is not None
    assert sweep["eval_over_sweep"]["recapfast-torch"] > 0
    assert {r["mode"] for r in saved["workloads"]["train_step"]["rows"]} == {"plain", "robust-exact", "robust-fd"}
    assert saved["workloads"]["screen_probe"]["probe_over_plain"] > 0
    assert saved["workloads"]["floor"]["sizes"][0]["mflop_per_image"] > 0
    assert [r["workers"] for r in saved["workloads"]["data_pipeline"]["rows"]] == [0, 1, 2]
    assert saved["meta"]["cores"] and saved["meta"]["torch"] == torch.__version__
    assert saved["meta"]["torch_threads"] == [1, 2]
    text = readme.section(saved, "x.json")
    assert "| px | contender |" in text and "skilled 20-line PyTorch script" in text
    assert saved["meta"]["git_commit"] in text


def test_readme_performance_section_is_generated_from_the_committed_results():
    """The README's figures are the newest committed results, verbatim (commit hash and every number)."""
    path = readme.latest()
    results = json.loads(path.read_text())
    expected = readme.section(results, readme.source_name(path))
    actual = readme.readme_section((ROOT / "README.md").read_text())
    assert actual == expected, "README performance section is stale: run `python -m bench.readme --write README.md`"
    assert results["meta"]["git_commit"] in actual


def test_skilled_script_equals_recapfast_sweep():
    """The 20-line bar computes the same attack as recapfast: identical predictions on a real model and images."""
    from bench import skilled
    from recapfast.attacks.single_step import sweep

    import recapfast as rf

    model = rf.load_model("baseline")
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (16,), generator=g)
    clean, fgsm, llcm = skilled.make(model, [1, 2, 3])(x, y)
    res = sweep(model, x, y, [1, 2, 3])
    assert torch.equal(clean, res.clean_predictions)
    assert torch.equal(fgsm, res.predictions["fgsm"]) and torch.equal(llcm, res.predictions["llcm"])


def test_cli_rejects_unknown_workload():
    from typer.testing import CliRunner

    from recapfast.cli import app

    res = CliRunner().invoke(app, ["bench", "--only", "nonsense"])
    assert res.exit_code == 1
    assert "--only" in res.output and "unknown workload(s) nonsense" in res.output


def test_cli_calls_the_suite_function_with_its_options(tmp_path, monkeypatch):
    """`recapfast bench` hands its options to bench.__main__.run (no argv re-parsing, sys.path untouched)."""
    from typer.testing import CliRunner

    from recapfast.cli import app

    calls = []

    def fake_run(mode, **options):
        calls.append((mode, options))
        return "report text\n"

    monkeypatch.setattr(bench_main, "run", fake_run)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    path_before = list(sys.path)
    res = CliRunner().invoke(app, ["bench", "--quick", "--only", "screen-probe,floor", "--threads", "1,2",
                                   "--contenders", "skilled", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert res.output == "report text\n"
    assert calls == [("quick", {"only": "screen-probe,floor", "threads": "1,2", "model": None,
                                "out": tmp_path / "r", "contenders": "skilled"})]
    assert sys.path == path_before


@pytest.mark.parametrize("args, option, words", [
    (["--threads", "one"], "--threads", "comma-separated positive integers"),
    (["--threads", "0"], "--threads", "positive integers"),
    (["--only", "eval-sweep,nope"], "--only", "unknown workload(s) nope"),
    (["--quick", "--sizes", "48"], "--sizes", "not in the quick plan"),
])
def test_bad_option_is_one_line_naming_it_before_any_work(tmp_path, capsys, args, option, words):
    out = tmp_path / "results"
    assert bench_main.main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: bench: {option}: ") and words in err[0], err
    assert not out.exists()                       # refused before anything ran or was written


def test_fd_penalty_mode_exact_unchanged_and_fd_trains():
    """penalty_mode defaults to exact, whose loss is the documented eq. 5-7 (double backprop),
    bit for bit; fd gives a finite loss whose gradient reaches the weights."""
    from recapfast.training.train import TrainConfig, robust_loss, training_loss, fgsm_mixed_batch, adversarial_eps

    model = make_model().train()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=g).float()
    y = torch.randint(0, 2, (8,), generator=g)
    cfg = TrainConfig(robust=True, batch_size=8, adv_count=4)
    assert cfg.penalty_mode == "exact"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = training_loss(model, x, y, cfg, step=5)
    model.load_state_dict(state)
    eps = adversarial_eps(cfg, 5, 8)
    xb = fgsm_mixed_batch(model, x, y, eps)
    w = torch.ones(8)
    w[:4] = cfg.adv_weight
    ref, _ = robust_loss(model, xb, y, w, cfg.penalty)
    assert torch.equal(loss, ref)
    model.load_state_dict(state)
    fd, stats = training_loss(model, x, y, TrainConfig(robust=True, batch_size=8, adv_count=4, penalty_mode="fd"), 5)
    fd.backward()
    assert torch.isfinite(fd) and stats["grad_norm"] > 0
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(Exception, match="penalty-mode"):
        TrainConfig(penalty_mode="nope").validate()


def test_cli_loads_the_suite_from_the_clone_without_sys_path_and_refuses_a_shadow(tmp_path, monkeypatch):
    import types

    import recapfast.cli.bench as bench_cli
    from recapfast.errors import UserError

    def bench_modules():
        return {n: m for n, m in sys.modules.items() if n == "bench" or n.startswith("bench.")}

    saved = bench_modules()
    for name in saved:
        del sys.modules[name]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    path_before = list(sys.path)
    try:
        suite = bench_cli._import_bench()             # not importable by name: loaded from the clone's folder
        assert Path(suite.__file__).resolve() == ROOT / "bench" / "__main__.py" and "screen-probe" in suite.WORKLOADS
        assert sys.path == path_before
        shadow = types.ModuleType("bench")
        shadow.__path__ = [str(tmp_path)]
        for name in bench_modules():
            del sys.modules[name]
        sys.modules["bench"] = shadow
        with pytest.raises(UserError, match="shadows recapfast's benchmark suite"):
            bench_cli._import_bench()
    finally:
        for name in bench_modules():
            del sys.modules[name]
        sys.modules.update(saved)

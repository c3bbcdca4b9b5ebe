"""The benchmark suite's machinery (tiny sizes; peers optional; no timing asserted) and the README's figures."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
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
    expected = readme.section(results, readme.source_name(path), *readme.auto_section_args(readme.latest_auto()))
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


# -------------------------------------------------- the robust training loss against an independent reference

def _reference_loss(w, b, x, y, weights, penalty, shift=None):
    """Eq. 5-7 by hand (float64 numpy) for a linear model z = x W^T + b: per image CE + penalty * ||grad_x CE||_2,
    weighted, over the batch size. For two classes grad_x CE_i = (p_i - onehot(y_i)) W."""
    xs = x if shift is None else x + shift
    z = xs @ w.T + b
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = lse - z[np.arange(len(y)), y]
    p = np.exp(z - lse[:, None])
    g = (p - np.eye(2)[y]) @ w
    norm = np.sqrt((g ** 2).sum(1) + 1e-20)
    per_image = ce + penalty * norm if penalty else ce
    return float((weights * per_image).sum() / len(y)), ce, g, norm


def _linear_case():
    """A 2-class linear detector on 2 x 2 RGB images whose input gradient is far from zero everywhere
    (W1 = -W0, |W0| >= 0.005), so every FGSM sign is the same in float32 and float64."""
    rng = np.random.default_rng(7)
    w0 = rng.choice([-1.0, 1.0], 12) * (0.005 + 0.01 * rng.random(12))
    w0[:2] = (0.01, -0.01)                       # image 0 (label 0) is pushed down at pixel 0, up at pixel 1
    w = np.stack([w0, -w0])
    b = np.array([0.1, -0.2])
    x = rng.integers(0, 256, (6, 12)).astype(np.float64)
    x[0, :2] = (1, 254)                          # ... where FGSM clips at both ends of the pixel range
    y = np.array([0, 1, 1, 0, 1, 0])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(w))
        model[1].bias.copy_(torch.tensor(b))
    return model, w, b, x, y


def _fd_grad(f, w, b, h=1e-6):
    """Central differences of f(w, b) over every weight and bias."""
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    for arr, out in ((w, gw), (b, gb)):
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            up = f(w, b)
            arr[idx] = old - h
            down = f(w, b)
            arr[idx] = old
            out[idx] = (up - down) / (2 * h)
    return gw, gb


@pytest.mark.parametrize("penalty_mode", ["exact", "fd"])
def test_training_loss_equals_hand_computed_eq5_to_7(penalty_mode):
    """training_loss on a linear model against eq. 5-7 written out by hand: the FGSM images of the first k
    (eps fixed by eps_min = eps_max, rounded half to even, clipped to [0, 255]), the weights alpha / 1,
    the penalty lambda * ||grad_x CE|| at the FGSM image (exact) or the CE at the image moved lambda along
    the clean gradient's direction (fd); and its parameter gradient against finite differences (the
    double-backprop term included)."""
    from recapfast.training.train import TrainConfig, training_loss

    model, w, b, x, y = _linear_case()
    k, eps, lam, alpha = 3, 2.5, 10.0, 0.2
    cfg = TrainConfig(robust=True, batch_size=6, adv_count=k, eps_min=eps, eps_max=eps, penalty=lam,
                      adv_weight=alpha, penalty_mode=penalty_mode)
    assert TrainConfig().penalty_mode == "exact"
    cfg.validate()
    weights = np.array([alpha] * k + [1.0] * (6 - k))
    _, _, g_clean, norm_clean = _reference_loss(w, b, x, y, weights, lam)
    xb = x.copy()
    xb[:k] = np.round(np.clip(x[:k] + eps * np.sign(g_clean[:k]), 0, 255))
    assert (xb[0, 0], xb[0, 1]) == (0, 255) and sorted(set(np.abs(xb - x)[:k].ravel())) == [1.0, 2.0, 3.0]
    if penalty_mode == "exact":
        def reference(wv, bv):
            return _reference_loss(wv, bv, xb, y, weights, lam)[0]
        _, ce, _, norm = _reference_loss(w, b, xb, y, weights, lam)
        grad_norm = norm.mean()
    else:
        shift = lam * g_clean / norm_clean[:, None]

        def reference(wv, bv):
            return _reference_loss(wv, bv, xb, y, weights, 0.0, shift)[0]
        _, ce, _, _ = _reference_loss(w, b, xb, y, weights, 0.0, shift)
        grad_norm = norm_clean.mean()

    xt = torch.tensor(x, dtype=torch.float32).view(6, 3, 2, 2)
    loss, stats = training_loss(model, xt, torch.tensor(y), cfg, step=11)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(reference(w, b), rel=1e-5)
    assert float(stats["ce"]) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(stats["grad_norm"]) == pytest.approx(grad_norm, rel=1e-5)
    gw, gb = _fd_grad(reference, w.copy(), b.copy())
    np.testing.assert_allclose(model[1].weight.grad.double().numpy(), gw, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(model[1].bias.grad.double().numpy(), gb, rtol=1e-3, atol=1e-6)


def test_training_loss_baseline_is_mean_cross_entropy_and_modes_are_checked():
    from recapfast.training.train import TrainConfig, training_loss

    model, w, b, x, y = _linear_case()
    loss, stats = training_loss(model, torch.tensor(x, dtype=torch.float32).view(6, 3, 2, 2), torch.tensor(y),
                                TrainConfig(robust=False, batch_size=6), step=0)
    _, ce, _, _ = _reference_loss(w, b, x, y, np.ones(6), 0.0)
    assert float(loss.detach()) == pytest.approx(ce.mean(), rel=1e-5) and float(stats["ce"]) == float(loss.detach())
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

"""bench/gpu/run.sh, the prepared GPU run, dry-run on the CPU so it cannot rot: the same steps on tiny sizes
with --device cpu (RECAPFAST_BACKEND=torch: the build step reports that it was skipped). Every step must
succeed and leave its results in $OUT/results.json; no timing is asserted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu" / "run.sh"


def run_script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_RUN_WORK": str(tmp_path / "work"),
               "RECAPFAST_BACKEND": "torch", "PYTHON": sys.executable, "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_dry_run_runs_every_step(tmp_path):
    done = run_script(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "results.json", "run.log", "tests.log"]
    results = json.loads((out / "results.json").read_text())
    steps = {s["step"]: s for s in results["steps"]}
    assert list(steps) == ["env", "build", "tests", "data", "sweep", "kernels", "auto", "train", "screen"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert "build skipped: RECAPFAST_BACKEND=torch" in (out / "build.log").read_text()
    # the test selection collects (the GPU tests themselves skip on a CPU): the CUDA parity tests, the ops' cuda
    # variants and the fast-path kernels' CUDA tests
    tests_log = (out / "tests.log").read_text()
    for name in ("test_sweep_cpu_vs_cuda", "test_perturb_bit_exact[shape0-True-dtype0-cuda]",
                 "test_cuda_relu_pool_bit_exact", "test_no_cuda_syncs_between_logging_steps"):
        assert name in tests_log, name
    assert "test_relu_pool_bit_exact" not in tests_log       # the host-shim tests are CI's, not the GPU run's
    w = results["workloads"]
    assert results["meta"]["device"] == "cpu" and results["meta"]["mode"] == "dry-run"
    sweep = w["sweep"]["sizes"][0]
    names = {r["contender"] for r in sweep["modes"]["model-only"]}
    assert {"recapfast-torch", "skilled"} <= names and "recapfast-ext" not in names      # no extension: missing
    assert {r["contender"] for r in sweep["modes"]["end-to-end"]} == names
    assert next(c for c in w["sweep"]["contenders"] if c["name"] == "recapfast-ext")["missing"]
    agree = {a["contender"]: a for a in sweep["agreement"]}
    assert agree["skilled"]["fgsm_identical"]
    assert all(r["wall_s"] > 0 for r in sweep["modes"]["model-only"])
    assert w["kernels"]["backend"] == "torch" and {r["op"] for r in w["kernels"]["rows"]} == {
        "relu_pool", "relu_pool_backward (2 cotangents)", "stem_pool (keep pre)", "stem_pool_backward (2 cotangents)",
        "adv_metrics (10 batches)"}
    auto = w["auto"]
    assert set(auto["hooks"]) == {"bench.auto"}
    assert [c["size"] for c in auto["cli"]] == [32] and auto["cli"][0]["result"]
    assert {r["mode"] for r in w["train"]["rows"]} == {"plain", "robust-exact", "robust-fd"}
    assert {k: v["records"] for k, v in w["screen"]["rows"].items()} == {"no-probe": 2, "probe-eps-1..5": 2}


def test_bad_argument_and_missing_out_are_one_line(tmp_path):
    done = run_script(tmp_path, "--fast")
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: bench/gpu/run.sh: unknown argument --fast (only --dry-run)"]
    environ = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "error: bench/gpu/run.sh: set OUT to the results folder"


def test_auto_hook_runs_a_present_workload_and_records_an_absent_or_failing_one(monkeypatch, tmp_path):
    """bench/gpu's AUTO_WORKLOADS: a bench module with run(...) is called on the run's device and sizes."""
    import importlib.machinery
    import types

    sys.path.insert(0, str(ROOT))
    from bench.gpu import __main__ as gpu

    monkeypatch.setenv("RECAPFAST_BACKEND", "torch")
    monkeypatch.setenv("RECAPFAST_BENCH_CACHE", str(tmp_path))
    calls = []
    present = types.ModuleType("bench_auto_present")
    present.__spec__ = importlib.machinery.ModuleSpec("bench_auto_present", None)
    present.run = lambda model, cont, sizes, counts, batch, reps, device: calls.append((sizes, device)) or {"ok": 1}
    failing = types.ModuleType("bench_auto_failing")
    failing.__spec__ = importlib.machinery.ModuleSpec("bench_auto_failing", None)
    failing.run = lambda *args, **kwargs: 1 / 0
    monkeypatch.setitem(sys.modules, "bench_auto_present", present)
    monkeypatch.setitem(sys.modules, "bench_auto_failing", failing)
    monkeypatch.setattr(gpu, "AUTO_WORKLOADS", ("bench_auto_present", "bench_auto_failing", "bench_auto_absent"))
    got = gpu.auto_hooks(gpu.PLANS["dry"], "cpu")
    assert got["bench_auto_present"] == {"ok": 1} and calls == [((32,), "cpu")]
    assert got["bench_auto_failing"].startswith("failed: ZeroDivisionError")
    assert got["bench_auto_absent"].startswith("absent")

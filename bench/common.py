"""Shared machinery of the benchmark suite: machine description, per-contender settings, timers, data, model.

Timing policy (docs/architecture.md, "Measuring"): every workload runs all contenders in the same
process on the same inputs; within a repetition the contenders run one after the other in a rotating
order, so background load hits them alike. Each run records CPU time (``time.process_time``: this
process only, all its threads) and wall time; the statistic is the median of >= 7 repetitions, and
ratios are taken between CPU-time medians of contenders of the same run. Every contender runs inside
:func:`contender_settings`, which sets its op backend and torch thread count and restores both.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .kernels import cpu_model, machine_slug

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BUNDLED_BASELINE = REPO / "recapfast" / "weights" / "baseline.safetensors"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Synthetic folders and the fallback model live here (outside the repository)."""
    root = os.environ.get("RECAPFAST_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recapfast", "bench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_commit() -> str:
    """HEAD's hash, with "+dirty" when tracked files differ from it (what was measured is then not HEAD)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


@contextlib.contextmanager
def contender_settings(backend: str | None, threads: int):
    """Run with this op backend ('ext', 'torch', 'auto'; None: leave it) and torch thread count, then restore."""
    from recapfast import ops

    saved_backend, saved_threads = ops._requested, torch.get_num_threads()
    if backend is not None:
        ops.set_backend(backend)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        ops.set_backend(saved_backend)
        torch.set_num_threads(saved_threads)


def machine_meta(device: str, threads: list[int], mode: str) -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "machine": cpu_model() if device == "cpu" else torch.cuda.get_device_name(0),
        "slug": machine_slug(device),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": list(threads), "device": device,
        "gpu": gpus[0] if gpus else None,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(), "mode": mode,
        "load_avg_1min_at_start": load_average(),
    }


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[float, float, float]:
    """(CPU seconds of this process, wall seconds, system-CPU seconds) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    s0, c0, w0 = os.times().system, time.process_time(), time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.process_time() - c0, time.perf_counter() - w0, os.times().system - s0


def alternate(fns: dict[str, Callable[[], object]], reps: int, device: str = "cpu",
              warmup: dict[str, Callable[[], object]] | None = None) -> dict[str, dict[str, list[float]]]:
    """CPU and wall seconds of ``reps`` runs of each function; round r starts at contender r (rotating order).

    ``warmup`` (default: the functions themselves) runs once each first and is not timed
    (oneDNN primitive creation, allocator growth, lazy imports).
    """
    for fn in (warmup if warmup is not None else fns).values():
        fn()
    names = list(fns)
    times: dict[str, dict[str, list[float]]] = {n: {"cpu": [], "wall": [], "sys": []} for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            cpu, wall, system = timed(fns[name], device)
            times[name]["cpu"].append(cpu)
            times[name]["wall"].append(wall)
            times[name]["sys"].append(system)
    return times


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def summary(samples: dict[str, list[float]], items: int | None = None) -> dict:
    """Medians (and all samples) of one contender's CPU and wall seconds; items/s from both."""
    cpu, wall = median(samples["cpu"]), median(samples["wall"])
    out = {"cpu_s": round(cpu, 4), "wall_s": round(wall, 4), "sys_s": round(median(samples.get("sys", [])), 4),
           "cpu_all": [round(v, 4) for v in samples["cpu"]], "wall_all": [round(v, 4) for v in samples["wall"]]}
    if items is not None:
        out["per_s_cpu"] = round(items / cpu, 2) if cpu > 0 else None
        out["per_s_wall"] = round(items / wall, 2) if wall > 0 else None
    return out


def synth_folder(size: int, count: int, seed: int = 2024, workers: int | None = None) -> Path:
    """A labelled PNG folder of ``count`` originals + ``count`` recaptures at ``size`` px (cached); ``workers``
    rendering processes (default: synthesize's)."""
    from recapfast.data.synth import synthesize
    from recapfast.io.atomic import publish_dir

    root = cache_dir() / f"synth-{size}px-{count}x2-seed{seed}"
    if (root / "manifest.json").is_file():
        return root
    log(f"bench: synthesizing {2 * count} PNGs at {size} px into {root} (cached for later runs)")
    t0 = time.perf_counter()
    publish_dir(root, lambda tmp: synthesize(tmp, size=size, count=count, seed=seed, workers=workers))
    log(f"bench: synthesized in {time.perf_counter() - t0:.0f} s")
    return root


def load_folder(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All patches of a folder decoded into memory: (uint8 [N, 3, S, S], labels [N])."""
    from recapfast.data.folder import PatchDataset, discover, make_loader

    xs, ys = [], []
    for batch in make_loader(PatchDataset(discover(root), size), 256, 0):
        xs.append(batch.x)
        ys.append(batch.y)
    return torch.cat(xs), torch.cat(ys)


def get_model(model_path: str | None, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model every contender uses: --model, else the bundled baseline, else a quick-trained one."""
    import recapfast as rf

    if model_path:
        model = rf.load_model(model_path)
        info = {"model": str(model_path), "source": "--model"}
    elif BUNDLED_BASELINE.is_file():
        model = rf.load_model("baseline")
        info = {"model": "baseline", "source": f"bundled {BUNDLED_BASELINE.relative_to(REPO)}"}
    else:
        path = cache_dir() / "quick-baseline.safetensors"
        if not path.is_file():
            from recapfast.training.train import TrainConfig, train

            data = synth_folder(64, 300, seed=11)
            log("bench: no bundled baseline; training a quick one (300 iterations, 64 px)")
            cfg = TrainConfig(iters=300, batch_size=32, lr=1e-3, lr_step=100_000, val_every=300, seed=0)
            train(data, path, cfg, log=lambda m: None)
        model = rf.load_model(path)
        info = {"model": str(path), "source": "trained by the bench (300 iterations, synthetic 64 px PNGs, seed 0): "
                                              "no bundled baseline existed when this ran"}
    model = model.to(device).eval()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["widths"] = list(getattr(model, "widths", []))
    return model, info

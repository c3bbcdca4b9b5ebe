"""Training reads nothing from the device between logging steps (no per-step host sync).

On a GPU every read of a device value (``.item()``, ``float(t)``, ``.tolist()``, ``bool(t)``, ``.cpu()``)
waits for the whole queue of kernels; under torchrun the per-step loss logging also cost an all-reduce.
These tests mock the reading methods of ``torch.Tensor`` and record every call made from recapfast's
own code, tagged with the training step in progress, so they run (and fail on a regression) on the CPU.
The input pipeline (``recapfast/data/folder.py``, the batch index sampler) works on host tensors by design
and is not counted. Where CUDA is available, torch's own sync detector checks the same on the GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import recapfast
from recapfast.training import train as train_mod
from recapfast.training.train import TrainConfig, train

TINY = (4, 4, 8, 8, 8)
PKG = Path(recapfast.__file__).resolve().parent
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")
HOST_SIDE = {("data.py", None), ("train.py", "indices"), ("splits.py", None)}


class HostReads:
    """Records (step, file, function, method) for each tensor read issued directly by recapfast code."""

    def __init__(self, monkeypatch):
        self.step = 0
        self.calls: list[tuple[int, str, str, str]] = []
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        def read(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            path = Path(frame.f_code.co_filename).resolve()
            if PKG in path.parents:
                where = (path.name, frame.f_code.co_name)
                if where not in HOST_SIDE and (path.name, None) not in HOST_SIDE:
                    self.calls.append((self.step, path.name, frame.f_code.co_name, name))
            return original(tensor, *args, **kwargs)
        return read

    def progress(self, n: int) -> None:   # train() calls this after each step; validation follows it
        self.step += n

    def during_steps(self, first: int, last: int) -> list:
        return [c for c in self.calls if first <= c[0] <= last]


CONFIGS = {
    "plain": dict(),
    "robust-exact": dict(robust=True, penalty=0.1, adv_count=4),
    "robust-fd": dict(robust=True, penalty=0.1, adv_count=4, penalty_mode="fd"),
    "fast-at": dict(defense="fast-at", val_attack_steps=2),
    "trades": dict(defense="trades", trades_steps=2, val_attack_steps=2),
}


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_no_host_reads_between_logging_steps(mode, synth_dir, tmp_path, monkeypatch):
    reads = HostReads(monkeypatch)
    cfg = TrainConfig(iters=6, val_every=3, batch_size=8, lr=1e-3, seed=1, widths=TINY, **CONFIGS[mode])
    res = train(synth_dir, tmp_path / "m.safetensors", cfg, log=lambda m: None, progress=reads.progress)
    assert res.iterations == 6 and len(res.history) == 2
    # Counter value k while step k + 1 runs; validation/logging after step 3 and 6 runs at k = 3 and 6.
    # Steps 2, 3, 5 and 6 (k = 1, 2, 4, 5) must read nothing (step 1 shares k = 0 with the setup).
    per_step = [c for c in reads.calls if c[0] not in (0, 3, 6)]
    assert per_step == [], per_step
    # The mock does see the reads that logging makes (and these are the only ones after setup).
    assert reads.during_steps(3, 3) and reads.during_steps(6, 6)
    assert all(c[0] in (0, 3, 6) for c in reads.calls)


def test_logged_loss_is_the_mean_of_the_step_losses(synth_dir, tmp_path, monkeypatch):
    """The batched read gives exactly what per-step float(loss) gave: the mean over the steps since the last log."""
    seen = []
    original = train_mod.training_loss

    def spy(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        seen.append(float(loss.detach()))
        return loss, stats

    monkeypatch.setattr(train_mod, "training_loss", spy)
    cfg = TrainConfig(iters=5, val_every=3, batch_size=8, lr=1e-3, seed=2, widths=TINY, robust=True, penalty=0.1,
                      adv_count=4)
    res = train(synth_dir, tmp_path / "m.safetensors", cfg, log=lambda m: None)
    assert [h["iteration"] for h in res.history] == [3, 5]
    assert res.history[0]["loss"] == sum(seen[:3]) / 3
    assert res.history[1]["loss"] == sum(seen[3:]) / 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("mode", ["robust-exact", "fast-at", "trades"])
def test_no_cuda_syncs_between_logging_steps(mode, synth_dir, tmp_path, monkeypatch):
    """On a GPU: torch's sync debug mode turns any synchronizing call during steps 2..N-1 into an error."""
    calls = {"n": 0}
    previous = torch.cuda.get_sync_debug_mode()

    def progress(n):
        calls["n"] += n
        # Steps 2 .. iters-1 run between these two calls; the last step's logging must be allowed.
        torch.cuda.set_sync_debug_mode("error" if calls["n"] < 5 else previous)

    cfg = TrainConfig(iters=6, val_every=6, batch_size=8, lr=1e-3, seed=1, widths=TINY, **CONFIGS[mode])
    try:
        train(synth_dir, tmp_path / "m.safetensors", cfg, device="cuda", log=lambda m: None, progress=progress)
    finally:
        torch.cuda.set_sync_debug_mode(previous)

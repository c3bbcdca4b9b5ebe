"""Training-step workload: CPU ms/step of plain, robust exact (double backprop) and robust fd training.

Batch 64 at 64 px (one optimizer step: loss, backward, Adam), the op backend recapfast picks (auto).
The three modes alternate, each on its own copy of the same model and optimizer; ratios are taken
between CPU-time medians.  Robustness of fd vs exact: both fine-tune the
same starting model on the same batches for the same number of iterations (plain fine-tuning as
the reference), then clean and FGSM eps 2 accuracy are measured on a held-out synthetic folder.
"""
from __future__ import annotations

import copy

import torch

from .common import alternate, contender_settings, load_folder, log, median, summary, synth_folder

MODES = ("plain", "robust-exact", "robust-fd")


def _config(mode: str, batch: int):
    from recapfast.training.train import TrainConfig

    return TrainConfig(batch_size=batch, robust=mode != "plain", penalty_mode="fd" if mode == "robust-fd" else "exact")


def _stepper(model, mode: str, x, y, batch: int, lr: float = 1e-4):
    from recapfast.training.train import training_loss

    model = copy.deepcopy(model).train()
    config = _config(mode, batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    state = {"step": 0}

    def step():
        i = state["step"]
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(i))[:batch]
        loss, _ = training_loss(model, x[idx].float(), y[idx], config, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] = i + 1
    return model, step


TARGETS = {"robust-exact": 3.0, "robust-fd": 1.6}


def timing(model, reps: int, batch: int = 64, size: int = 64, count: int = 64, threads: int = 1) -> dict:
    from recapfast import ops

    x, y = load_folder(synth_folder(size, count), size)
    steps = {}
    for m in MODES:
        step = _stepper(model, m, x, y, batch)[1]
        steps[m] = (lambda step=step: _in_settings(step, threads))
    log(f"bench train-step: {len(MODES)} modes x {reps} reps, batch {batch}, {size} px")
    times = alternate(steps, reps)
    plain = median(times["plain"]["cpu"])
    rows = []
    for m, ts in times.items():
        s = summary(ts)
        rows.append({"mode": m, "cpu_ms_per_step": round(1e3 * s["cpu_s"], 1),
                     "wall_ms_per_step": round(1e3 * s["wall_s"], 1), "cpu_ms_all": [round(1e3 * v, 1) for v in ts["cpu"]],
                     "ratio_vs_plain": round(s["cpu_s"] / plain, 2)})
        log(f"  {m:13s} {1e3 * s['cpu_s']:8.1f} cpu-ms/step  x{s['cpu_s'] / plain:4.2f} plain")
    with contender_settings("auto", threads):
        backend = ops.active_backend()
    return {"batch": batch, "size": size, "reps": reps, "threads": threads, "backend": backend, "rows": rows,
            "targets": TARGETS}


def _in_settings(step, threads: int) -> None:
    with contender_settings("auto", threads):
        step()


def robustness(model, iters: int, batch: int = 64, size: int = 64, lr: float = 1e-4, train_count: int = 300,
               eval_count: int = 128) -> dict:
    """Fine-tune the same model with each mode on the same batches; clean / FGSM eps 2 accuracy."""
    from recapfast.engine.evaluate import Evaluator

    x, y = load_folder(synth_folder(size, train_count, seed=11), size)
    xv, yv = load_folder(synth_folder(size, eval_count, seed=99), size)
    out = {"iters": iters, "batch": batch, "lr": lr, "train_images": int(x.shape[0]), "eval_images": int(xv.shape[0]),
           "start": "the benchmark model", "rows": []}
    for mode in MODES:
        tuned, step = _stepper(model, mode, x, y, batch, lr)
        log(f"bench robustness: fine-tuning {iters} iterations, {mode}")
        for _ in range(iters):
            step()
        tuned.eval()
        ev = Evaluator(tuned, [2.0], ["fgsm"])
        for i in range(0, xv.shape[0], 128):
            ev.update(xv[i:i + 128], yv[i:i + 128])
        res = ev.result()
        out["rows"].append({"mode": mode, "clean_accuracy": round(res.clean_accuracy, 4),
                            "fgsm_eps2_accuracy": round(res.cells[0].accuracy, 4)})
        log(f"  {mode:13s} clean {100 * res.clean_accuracy:5.1f}%  FGSM eps 2 {100 * res.cells[0].accuracy:5.1f}%")
    ev = Evaluator(model.eval(), [2.0], ["fgsm"])
    for i in range(0, xv.shape[0], 128):
        ev.update(xv[i:i + 128], yv[i:i + 128])
    res = ev.result()
    out["start_accuracy"] = {"clean_accuracy": round(res.clean_accuracy, 4),
                             "fgsm_eps2_accuracy": round(res.cells[0].accuracy, 4)}
    return out

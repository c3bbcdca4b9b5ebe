"""CPU vs CUDA parity of the user-facing paths: sweep, evaluate_folder, one robust training step.

GPU only (skipped without one). TF32 is off here (tolerances are float32's); what TF32 costs is measured
by ``python tests/tf32_report.py``. The backend is the extension with CUDA kernels when it has them
(``auto``), so these also run the CUDA ops end to end.
"""
from __future__ import annotations

import copy

import pytest
import torch

from recapfast.attacks.single_step import sweep
from recapfast.engine.evaluate import evaluate_folder
from recapfast.training.train import TrainConfig, training_loss

from conftest import make_model, random_batch, use_backend
from tf32_report import tf32

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


@pytest.fixture(autouse=True)
def no_tf32_auto_backend():
    with tf32(False), use_backend("auto"):
        yield


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.cpu() == b.cpu()).float().mean().item()


@gpu
def test_sweep_cpu_vs_cuda():
    model = make_model(seed=2)
    x, y = random_batch(32, 64, seed=11)
    runs = {}
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        runs[device] = sweep(m, x.to(device), y.to(device), eps=[1, 2, 3, 4, 5], attacks=("fgsm", "llcm"),
                             return_images=True)
    cpu, gpu = runs["cpu"], runs["cuda"]
    torch.testing.assert_close(gpu.clean_logits.cpu(), cpu.clean_logits, rtol=1e-4, atol=1e-4)
    for attack in ("fgsm", "llcm"):
        # Gradient signs can differ where a gradient is within rounding of zero: allow a few pixels.
        assert agreement(gpu.images[attack], cpu.images[attack]) >= 0.9999, attack
        assert agreement(gpu.predictions[attack], cpu.predictions[attack]) >= 0.99, attack


@gpu
def test_evaluate_folder_cpu_vs_cuda(synth_dir):
    model = make_model(seed=3)
    res = {}
    for device in ("cpu", "cuda"):
        res[device] = evaluate_folder(copy.deepcopy(model).to(device), synth_dir, [1, 2], ("fgsm", "llcm"),
                                      size=64, batch_size=16)
    cpu, gpu = res["cpu"], res["cuda"]
    assert gpu.files == cpu.files and gpu.patches == cpu.patches
    assert abs(gpu.clean_correct - cpu.clean_correct) <= 1
    for a, b in zip(gpu.cells, cpu.cells):
        assert (a.attack, a.eps) == (b.attack, b.eps) and abs(a.correct - b.correct) <= 1
        assert a.mean_linf == pytest.approx(b.mean_linf, abs=1e-3)


@gpu
@pytest.mark.parametrize("penalty_mode", ["exact", "fd"])
def test_robust_training_step_cpu_vs_cuda(penalty_mode):
    model = make_model(seed=4).train()
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (16, 3, 64, 64), generator=gen).float()
    y = torch.randint(0, 2, (16,), generator=gen)
    cfg = TrainConfig(robust=True, batch_size=16, adv_count=8, penalty=10.0, penalty_mode=penalty_mode)
    params = {}
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        loss, _ = training_loss(m, x.to(device), y.to(device), cfg, step=3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = {k: p.grad.detach().cpu().clone() for k, p in m.named_parameters()}
        opt.step()
        params[device] = (float(loss), grads)
    (loss_cpu, g_cpu), (loss_gpu, g_gpu) = params["cpu"], params["cuda"]
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    for k in g_cpu:
        scale = max(float(g_cpu[k].abs().max()), 1e-6)
        torch.testing.assert_close(g_gpu[k], g_cpu[k], rtol=1e-3, atol=1e-3 * scale, msg=k)


def test_tf32_report_dry_run_on_cpu(capsys):
    """The report script runs (on a GPU: `python tests/tf32_report.py`); here its CPU dry run."""
    import tf32_report

    assert tf32_report.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "case" not in ln]
    assert len(rows) == 4
    for row in rows:
        off, on = (float(v) for v in row.strip("| ").split("|")[1:])
        assert off == on and off < 1e-5      # no TF32 on the CPU; float32 vs float64

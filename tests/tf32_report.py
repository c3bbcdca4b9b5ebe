"""TF32 accuracy report: max relative error of the float32 paths with TF32 on vs off (GPU).

    python tests/tf32_report.py            # on cuda; prints a table, exits 1 without a GPU
    python tests/tf32_report.py --device cpu   # dry run (TF32 does not exist on the CPU: both columns equal)

The tolerance tests (tests/test_ops.py, tests/test_cuda.py) run with TF32 off; this says what turning it on
(cuDNN's default for convolutions on Ampere and newer) costs. Error = max |out - ref| / max |ref| against the
same computation in float64 on the CPU, for: laplace_conv forward and its input gradient, the model's
logits at 64 px, and the robust penalty's input gradient.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys

import torch


@contextlib.contextmanager
def tf32(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return float((out.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def cases(device: torch.device):
    """(name, fn(dtype, device) -> tensor) pairs; fn computes the same thing in any dtype on any device."""
    from recapfast import ops
    from recapfast.models.laplacian import LaplacianCNN

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 64, 64), generator=gen).double()
    w = torch.randn(32, 3, 3, 3, generator=gen, dtype=torch.float64) / 10
    b = torch.randn(32, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = LaplacianCNN().double().eval()
    y = torch.randint(0, 2, (16,), generator=gen)

    def laplace_forward(dtype, dev):
        return ops.laplace_conv(x.to(dev, dtype), w.to(dev, dtype), b.to(dev, dtype))

    def laplace_input_grad(dtype, dev):
        xi = x.to(dev, dtype).requires_grad_(True)
        out = ops.laplace_conv(xi, w.to(dev, dtype), b.to(dev, dtype))
        return torch.autograd.grad(out.square().mean(), xi)[0]

    def logits(dtype, dev):
        with torch.no_grad():
            return copy.deepcopy(model).to(dev, dtype)(x.to(dev, dtype))

    def penalty_input_grad(dtype, dev):
        m = copy.deepcopy(model).to(dev, dtype)
        xi = x.to(dev, dtype).requires_grad_(True)
        ce = torch.nn.functional.cross_entropy(m(xi), y.to(dev), reduction="sum")
        return torch.autograd.grad(ce, xi)[0]

    return [("laplace_conv forward", laplace_forward), ("laplace_conv d/dx", laplace_input_grad),
            ("model logits 64 px", logits), ("input gradient (FGSM / penalty)", penalty_input_grad)]


def report(device: torch.device) -> list[dict]:
    rows = []
    for name, fn in cases(device):
        ref = fn(torch.float64, torch.device("cpu"))
        row = {"case": name}
        for enabled in (False, True):
            with tf32(enabled):
                row["tf32_on" if enabled else "tf32_off"] = rel_error(fn(torch.float32, device), ref)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("tf32_report: needs a CUDA GPU (use --device cpu for a dry run)", file=sys.stderr)
        return 1
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no TF32: dry run)"
    print(f"TF32 accuracy report on {where}, torch {torch.__version__}; max rel error vs float64")
    print(f"| {'case':32s} | {'TF32 off':>10s} | {'TF32 on':>10s} |")
    print(f"|{'-' * 34}|{'-' * 11}:|{'-' * 11}:|")
    for row in report(device):
        print(f"| {row['case']:32s} | {row['tf32_off']:10.2e} | {row['tf32_on']:10.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

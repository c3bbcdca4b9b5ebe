"""Kernel benchmark: the recapfast C++ ops against their pure-PyTorch references.

    python -m bench.kernels [--quick] [--out bench/results]

Measures, at batch 64 and 64/256/512 px: perturb (5-eps sweep, uint8 in -> uint8 out),
laplace_conv forward, and laplace_conv forward+backward (grads for weight and bias, as in
training; and for the input too, as in an attack). Median of several repetitions after a warm-up;
ratio = reference time / extension time (> 1: the extension is faster). Results are written to
bench/results/kernels-<machine>.json and .md. With --quick, fewer repetitions and batch 16 at 512 px.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from recapfast import ops
from recapfast.io.atomic import write_text

EPS = [1.0, 2.0, 3.0, 4.0, 5.0]
SIGNS = [1.0] * len(EPS)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug(device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"{cpu_model()}-{os.cpu_count()}c"
    name = re.sub(r"\((R|TM|tm|r)\)|CPU|Processor|@.*$", "", name)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def timeit_pair(ext_fn, ref_fn, reps: int, device: str) -> tuple[float, float]:
    """Median seconds of each; the two alternate so that background load hits both alike."""
    def once(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    ext_fn(), ref_fn()  # warm-up (oneDNN primitive creation, allocator)
    ext_times, ref_times = [], []
    for _ in range(reps):
        ext_times.append(once(ext_fn))
        ref_times.append(once(ref_fn))
    return statistics.median(ext_times), statistics.median(ref_times)


def cases(size: int, batch: int, device: str):
    gen = torch.Generator().manual_seed(size)
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    grad = torch.randn(batch, 3, size, size, generator=gen).to(device)
    weight = torch.randn(8, 3, 3, 3, generator=gen).to(device)
    bias = torch.randn(8, generator=gen).to(device)
    xf = x8.to(torch.float32)

    def perturb_ext():
        return torch.ops.recapfast.perturb(x8, grad, EPS, SIGNS, True)

    def perturb_ref():
        return ops.perturb_reference(x8, grad, EPS, SIGNS, True)

    def fwd(fn):
        def run():
            with torch.no_grad():
                return fn(xf, weight, bias)
        return run

    def fwd_bwd(fn, input_grad: bool):
        w = weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)

        def run():
            x = xf.clone().requires_grad_(True) if input_grad else xf
            out = fn(x, w, b)
            out.backward(torch.ones_like(out))
        return run

    ext = torch.ops.recapfast.laplace_conv
    ref = ops.laplace_conv_reference
    yield "perturb (5 eps, uint8)", perturb_ext, perturb_ref
    yield "laplace_conv fwd", fwd(ext), fwd(ref)
    yield "laplace_conv fwd+bwd (w,b)", fwd_bwd(ext, False), fwd_bwd(ref, False)
    yield "laplace_conv fwd+bwd (x,w,b)", fwd_bwd(ext, True), fwd_bwd(ref, True)


def fastpath_cases(size: int, batch: int, device: str, k: int = 10):
    """The fast path's fused ops through their wrappers (the extension where it serves the device, else the
    reference) against the references: the stem unit of the bundled models (3 -> 8 channels), its backward
    for 2 cotangents per image, and the perturbation metrics of ``k`` adversarial batches."""
    from recapfast.ops import reference as R

    gen = torch.Generator().manual_seed(size + 1)
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    weight, bias = torch.randn(8, 3, 3, 3, generator=gen) / 10, torch.randn(8, generator=gen)
    pre = R.laplace_conv_reference(x8, weight, bias).contiguous(memory_format=torch.channels_last)
    half = (size - 1) // 2 + 1
    g = torch.randn(2 * batch, 8, half, half, generator=gen)
    adv = (x8.float() + torch.randint(-5, 6, (k, *x8.shape), generator=gen)).clamp(0, 255).to(torch.uint8)
    x8, weight, bias, pre, g, adv = (t.to(device) for t in (x8, weight, bias, pre, g, adv))
    yield "relu_pool", lambda: ops.relu_pool(pre), lambda: R.relu_pool_reference(pre)
    yield "relu_pool_backward (2 cotangents)", lambda: ops.relu_pool_backward(g, pre), \
        lambda: R.relu_pool_backward_reference(g, pre)
    yield "stem_pool (keep pre)", lambda: ops.stem_pool(x8, weight, bias, True), \
        lambda: R.stem_pool_reference(x8, weight, bias, True)
    yield "stem_pool_backward (2 cotangents)", lambda: ops.stem_pool_backward(g, pre, weight), \
        lambda: R.stem_pool_backward_reference(g, pre, weight)
    yield f"adv_metrics ({k} batches)", lambda: ops.adv_metrics(x8, adv), lambda: R.adv_metrics_reference(x8, adv)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; batch 16 at 512 px")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)

    ops.set_backend("ext")
    ops.active_backend()  # build now, outside the timings; raises with the build log if it cannot
    reps = 3 if args.quick else 7
    rows = []
    for size in (64, 256, 512):
        batch = 16 if (args.quick and size == 512) else 64
        for name, ext_fn, ref_fn in cases(size, batch, args.device):
            t_ext, t_ref = timeit_pair(ext_fn, ref_fn, reps, args.device)
            rows.append({"op": name, "size": size, "batch": batch, "ext_ms": round(t_ext * 1e3, 3),
                         "torch_ms": round(t_ref * 1e3, 3), "speedup": round(t_ref / t_ext, 2)})
            print(f"{name:30s} {size:4d}px b{batch:<3d} ext {t_ext*1e3:9.2f} ms  torch {t_ref*1e3:9.2f} ms  "
                  f"x{t_ref / t_ext:5.2f}", file=sys.stderr, flush=True)

    slug = machine_slug(args.device)
    meta = {
        "machine": cpu_model() if args.device == "cpu" else torch.cuda.get_device_name(0),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
        "torch": torch.__version__, "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "quick": args.quick, "reps": reps, "statistic": "median",
        "speedup": "torch_ms / ext_ms (reference over extension; > 1 means the extension is faster)",
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / f"kernels-{slug}.json", json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [
        f"# recapfast kernels vs PyTorch reference — {meta['machine']}",
        "",
        f"{meta['cores']} cores ({meta['torch_threads']} torch threads), device {args.device}, torch {meta['torch']}, "
        f"{meta['date']}, median of {reps} alternating runs{' (--quick)' if args.quick else ''}, "
        f"1-min load average at the end {meta['load_avg_1min_at_end']}. "
        "Speedup = reference time / extension time.",
        "",
        "| op | px | batch | ext ms | torch ms | speedup |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {r['op']} | {r['size']} | {r['batch']} | {r['ext_ms']:.2f} | {r['torch_ms']:.2f} | {r['speedup']:.2f}x |"
          for r in rows),
        "",
    ]
    write_text(out_dir / f"kernels-{slug}.md", "\n".join(lines))
    print(f"wrote {out_dir / f'kernels-{slug}.json'} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

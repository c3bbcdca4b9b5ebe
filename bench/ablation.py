"""Ablation: what each step of recapfast's fast path buys, measured one step at a time in one process.

    python -m bench.ablation [--threads 1] [--reps 7] [--out bench/results]

Three parts of the eval sweep at 64 px (128 images per forward, 64 per gradient pass) and 256 px (8 / 8),
each variant adding one change to the previous one; CPU time (``time.process_time``), medians of
alternating repetitions, on the bundled baseline:

- forward of one chunk: plain channels_last model with PyTorch ops (what the 20-liner runs) -> BatchNorm
  folded into the convolutions -> + fused ReLU + pooling op (``relu_pool``) -> + fused first unit
  (``stem_pool``): recapfast's forward;
- input gradients of FGSM and LLCM: two autograd backwards of the channels_last model (the 20-liner) ->
  one backward pass of the stacked cotangents with PyTorch reference ops -> with the C++ ops;
- perturbation metrics of the 10 adversarial batches: ``metrics.ssim`` per (attack, eps) plus norms (what
  the Evaluator did before) -> the reference of ``adv_metrics`` (clean statistics once, banded matrix
  products) -> the C++ ``adv_metrics``.

Results: bench/results/ablation-<machine>.json and .md (bench/NOTES.md quotes them).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import RESULTS, alternate, contender_settings, load_average, log, machine_meta, median

EPS = (1.0, 2.0, 3.0, 4.0, 5.0)


def _forward_variants(model, x, threads: int) -> dict:
    from recapfast import ops
    from recapfast.models import fastpath
    from recapfast.ops import reference as R

    plain = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    folded = fastpath.FoldedLaplacianCNN(model)
    xc = x.float().contiguous(memory_format=torch.channels_last)

    def folded_forward(relu_pool, stem):
        h = stem(x)
        h = F.conv2d(h, folded.weights[1], folded.biases[1], padding=1)
        for i in range(2, 5):
            h = F.conv2d(relu_pool(h), folded.weights[i], folded.biases[i], padding=1)
        return F.linear(F.relu(h).mean(dim=(2, 3)), folded.fc_weight, folded.fc_bias)

    def ref_stem(t):
        return R.relu_pool_reference(R.laplace_conv_reference(t, folded.weights[0], folded.biases[0]))

    def ext_relu_pool_stem(t):
        return ops.relu_pool(R.laplace_conv_reference(t, folded.weights[0], folded.biases[0]))

    def run(backend, fn):
        def go():
            with contender_settings(backend, threads), torch.inference_mode():
                fn()
        return go

    return {
        "plain channels_last, PyTorch ops": run("torch", lambda: plain(xc)),
        "+ BatchNorm folded": run("torch", lambda: folded_forward(R.relu_pool_reference, ref_stem)),
        "+ relu_pool op": run("ext", lambda: folded_forward(ops.relu_pool, ext_relu_pool_stem)),
        "+ stem_pool op (recapfast)": run("ext", lambda: folded.logits(x)),
    }


def _gradient_variants(model, x, y, threads: int) -> dict:
    from recapfast.attacks.single_step import input_gradients

    plain = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def two_backwards():
        with contender_settings("torch", threads):
            xf = x.float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            logits = plain(xf)
            torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xf, retain_graph=True)
            torch.autograd.grad(F.cross_entropy(logits, logits.argmin(1), reduction="sum"), xf)

    def stacked(backend):
        def go():
            with contender_settings(backend, threads):
                input_gradients(model, x, y, ("fgsm", "llcm"))
        return go

    return {"two autograd backwards (20-liner)": two_backwards,
            "one stacked backward, PyTorch ops": stacked("torch"),
            "one stacked backward, C++ ops (recapfast)": stacked("ext")}


def _metric_variants(model, x, y, threads: int) -> dict:
    from recapfast import metrics, ops
    from recapfast.attacks.single_step import sweep
    from recapfast.ops import reference as R

    with contender_settings("ext", threads):
        res = sweep(model, x, y, EPS, return_images=True, metrics="none")
    adv = torch.cat([res.images["fgsm"], res.images["llcm"]])            # [10, B, 3, H, W]

    def per_image():
        with contender_settings("torch", threads):
            for k in range(adv.shape[0]):
                metrics.ssim(adv[k], x, dtype=torch.float32)
                delta = (adv[k].float() - x.float()).flatten(1)
                delta.abs().amax(1), delta.square().sum(1)

    def reference():
        with contender_settings("torch", threads):
            R.adv_metrics_reference(x, adv)

    def fused():
        with contender_settings("ext", threads):
            ops.adv_metrics(x, adv)

    return {"metrics.ssim per (attack, eps) + norms": per_image,
            "adv_metrics reference (clean statistics once)": reference,
            "adv_metrics C++ (recapfast)": fused}


def run(threads: int = 1, reps: int = 7) -> dict:
    import recapfast as rf

    model = rf.load_model("baseline").eval()
    out = {"meta": machine_meta("cpu", [threads], "ablation"), "reps": reps, "parts": []}
    g = torch.Generator().manual_seed(0)
    for size, fwd_batch, grad_batch in ((64, 128, 64), (256, 8, 8)):
        x = torch.randint(0, 256, (fwd_batch, 3, size, size), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 2, (fwd_batch,), generator=g)
        for part, variants in (("forward", _forward_variants(model, x, threads)),
                               ("input gradients", _gradient_variants(model, x[:grad_batch], y[:grad_batch], threads)),
                               ("metrics", _metric_variants(model, x[:grad_batch], y[:grad_batch], threads))):
            log(f"bench ablation {size}px {part}: {len(variants)} variants x {reps} reps")
            times = alternate(variants, reps)
            rows, previous = [], None
            for name, t in times.items():
                cpu = median(t["cpu"])
                rows.append({"variant": name, "cpu_ms": round(1e3 * cpu, 2),
                             "vs_previous": round(previous / cpu, 2) if previous else None})
                log(f"  {name:48s} {1e3 * cpu:9.2f} ms" + (f"  x{previous / cpu:5.2f}" if previous else ""))
                previous = cpu
            first = rows[0]["cpu_ms"]
            for r in rows:
                r["vs_first"] = round(first / r["cpu_ms"], 2)
            out["parts"].append({"size": size, "part": part, "images": fwd_batch if part == "forward" else grad_batch,
                                 "rows": rows})
    out["meta"]["load_avg_1min_at_end"] = load_average()
    return out


def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [f"# recapfast ablation — {m['machine']} ({m['cores']} cores)", "",
             f"torch {m['torch']}, {m['torch_threads'][0]} thread(s), {m['date']}, commit {m['git_commit']}; 1-min load "
             f"{m['load_avg_1min_at_start']} at the start, {m.get('load_avg_1min_at_end')} at the end. CPU time, median "
             f"of {res['reps']} alternating repetitions; each variant adds one change to the one above it.", ""]
    for p in res["parts"]:
        lines += [f"## {p['part']}, {p['size']} px ({p['images']} images)", "",
                  "| variant | CPU ms | vs previous | vs first |", "|---|---:|---:|---:|"]
        for r in p["rows"]:
            previous = "–" if r["vs_previous"] is None else f"{r['vs_previous']:.2f}x"
            lines.append(f"| {r['variant']} | {r['cpu_ms']} | {previous} | {r['vs_first']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from recapfast.io.atomic import write_text

    res = run(args.threads, args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"ablation-{res['meta']['slug']}"
    write_text(stem.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    write_text(stem.with_suffix(".md"), markdown(res))
    sys.stdout.write(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

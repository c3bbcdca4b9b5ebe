"""Floor workload: how far the forwards are from this CPU's convolution floor on the model's own layers.

FLOPs per image of one LaplacianCNN forward (2 x multiply-adds of the Laplacian and the five 3x3
convolutions; BatchNorm, ReLU and pooling are not counted), each convolution's measured rate
(oneDNN via ``F.conv2d``, channels_last, inference mode, the batch the sweep uses), the floor
time per image = sum of FLOPs / rate over the layers, and the measured time per image of one pure
forward of recapfast's fast path (``fastpath.FoldedLaplacianCNN.logits``) and of a channels_last
copy of the model with plain PyTorch ops (what the 20-liner runs).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .common import alternate, contender_settings, log, median


def _shapes(model, size: int):
    shapes, h, cin = [], size, 3
    for unit in model.units:
        cout = unit.conv.weight.shape[0]
        shapes.append((cin, cout, h))
        cin, h = cout, (h - 1) // 2 + 1
    return shapes


def run(model, sizes=(64, 256), reps: int = 7, threads: int = 1) -> dict:
    from recapfast.models import fastpath

    out = []
    for size in sizes:
        batch = max(1, (1 << 19) // (size * size))
        layers, floor_s = [], 0.0
        with contender_settings("auto", threads), torch.inference_mode():
            fns = {}
            for i, (cin, cout, h) in enumerate(_shapes(model, size)):
                x = torch.randn(batch, cin, h, h).contiguous(memory_format=torch.channels_last)
                w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=torch.channels_last)
                fns[f"conv{i}"] = (lambda x=x, w=w: F.conv2d(x, w, padding=1))
            times = alternate(fns, reps)
            for i, (cin, cout, h) in enumerate(_shapes(model, size)):
                flops = 2.0 * h * h * cout * cin * 9
                t = median(times[f"conv{i}"]["cpu"]) / batch
                floor_s += t
                layers.append({"layer": i, "cin": cin, "cout": cout, "px": h, "mflop_per_image": round(flops / 1e6, 3),
                               "gflops": round(flops / t / 1e9, 1)})
        lap_flops = 2.0 * size * size * 3 * 5
        total = sum(layer["mflop_per_image"] for layer in layers) * 1e6 + lap_flops
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        folded = fastpath.FoldedLaplacianCNN(model)
        plain = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        xc = x.float().contiguous(memory_format=torch.channels_last)

        def fast():
            with contender_settings("auto", threads):
                folded.logits(x)

        def stock():
            with contender_settings("torch", threads), torch.inference_mode():
                plain(xc)
        t = alternate({"fast": fast, "stock": stock}, reps)
        fast_s, stock_s = median(t["fast"]["cpu"]) / batch, median(t["stock"]["cpu"]) / batch
        out.append({"size": size, "batch": batch, "mflop_per_image": round(total / 1e6, 2), "layers": layers,
                    "conv_floor_ms_per_image": round(1e3 * floor_s, 4),
                    "fast_forward_ms_per_image": round(1e3 * fast_s, 4),
                    "plain_channels_last_forward_ms_per_image": round(1e3 * stock_s, 4),
                    "fast_share_of_floor": round(floor_s / fast_s, 2), "plain_share_of_floor": round(floor_s / stock_s, 2)})
        log(f"bench floor {size}px: {total / 1e6:.1f} MFLOP/image; conv floor {1e3 * floor_s:.3f} ms/image; fast forward "
            f"{1e3 * fast_s:.3f} ({100 * floor_s / fast_s:.0f}% of floor), plain channels_last {1e3 * stock_s:.3f} "
            f"({100 * floor_s / stock_s:.0f}%)")
    return {"threads": threads, "reps": reps, "sizes": out}

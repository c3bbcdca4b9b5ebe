"""The primary bar: what a skilled user writes in ~20 lines of plain PyTorch (no recapfast op, no library).

One clean forward with autograd, one input gradient per attack (``retain_graph`` for the second), all
10 adversarial batches at once by broadcasting eps, quantized to the uint8 grid, then pure forwards of a
channels_last copy of the model under ``inference_mode`` in chunks of 2^19 pixels (128 images at 64 px,
8 at 256 px; measured on the 2-core dev box, 80 images at 256 px took 1.6-2.2x longer as one forward
than in chunks of 8, so a fixed chunk of 128 images would make this contender weaker). The contender runs with recapfast's op backend set to ``torch``, so the model's stem
is plain ``F.conv2d`` too. LLCM's target is the argmin over all classes (paper eq. 3), as recapfast's.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

CHUNK_PIXELS = 1 << 19


def make(model: torch.nn.Module, eps) -> callable:
    """batch (uint8 x, y) -> (clean predictions [B], FGSM predictions [E, B], LLCM predictions [E, B])."""
    net = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    e = torch.tensor([float(v) for v in eps]).view(-1, 1, 1, 1, 1)

    def run(x: torch.Tensor, y: torch.Tensor):
        xf = x.float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        logits = net(xf)
        (g_fgsm,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xf, retain_graph=True)
        (g_llcm,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmin(1), reduction="sum"), xf)
        x0 = xf.detach()
        adv = torch.cat([x0 + e * g_fgsm.sign(), x0 - e * g_llcm.sign()]).clamp_(0, 255).round_()
        adv = adv.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        chunk = max(1, CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))
        with torch.inference_mode():
            pred = torch.cat([net(c).argmax(1) for c in adv.split(chunk)]).view(2, len(e), -1)
        return logits.argmax(1), pred[0], pred[1]

    return run

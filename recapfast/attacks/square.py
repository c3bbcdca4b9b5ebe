"""Square Attack, L-inf (Andriushchenko et al. 2020), in pixel units on the uint8 grid: black-box.

The attack only ever reads the model's logits: every query is a plain forward under
``torch.no_grad`` in eval mode; no gradient is computed anywhere, so it is blind to gradient
masking and is the check that a white-box number is not an artefact of broken gradients.

Every adversarial image lies on a vertex of the box ``[lo, hi]`` = ``[x - eps, x + eps]`` within
[0, 255] (with ``quantize``, the default, the integer box ``[ceil(x - eps), floor(x + eps)]``, so every
query is an image a PNG can hold, and a fractional eps acts as its floor).  Per restart and patch:

    init    : vertical stripes: each column of each channel at lo or hi, with probability 1/2
    query i : a square window of side s_i at a random position, each channel's window set to lo or hi
              (probability 1/2 each); accepted when the margin loss z_y - max_{j != y} z_j decreases
    stop    : as soon as the margin is <= 0 (misclassified), or after ``queries`` queries in all

s_i = max(1, round(sqrt(p_i * H * W))) (at most min(H, W)), with p_i = p_init halved at the
fractions 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000 of the query budget (the
schedule of the reference implementation, rescaled to the budget).  Unlike AutoAttack's batched
version, which moves one window for the whole batch, every patch draws its own window position
and signs (as in the original algorithm); all draws come from one seeded CPU generator and are
made for the whole batch, so results do not depend on the device or on which patches are still
being attacked.  Restarts attack only the patches not yet misclassified.  Patches misclassified
when clean are returned unchanged; a patch never misclassified gets its lowest-margin image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from recapfast.attacks.apgd import AttackSettings, attack_inputs
from recapfast.attacks.single_step import _inference_forward, eval_mode

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass(frozen=True)
class SquareConfig(AttackSettings):
    """Square Attack settings: query budget per patch and restart, restarts, initial square fraction, seed."""

    NAME, COUNTS, FRACTION = "Square", ("queries", "restarts"), "p_init"
    queries: int = 1000
    restarts: int = 1
    p_init: float = 0.8
    seed: int = 0


def square_fraction(i: int, queries: int, p_init: float = 0.8) -> float:
    """p_i: the fraction of the image the i-th window covers (i counts the queries after the init)."""
    t = int(i / queries * 10_000)
    halvings = sum(t > edge for edge in _P_HALVINGS)
    return p_init / (2 ** halvings)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per row (<= 0: misclassified)."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return true - others


def _window_mask(vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    rows = torch.arange(h, device=vh.device).view(1, h)
    cols = torch.arange(w, device=vw.device).view(1, w)
    in_rows = (rows >= vh.view(-1, 1)) & (rows < vh.view(-1, 1) + s)
    in_cols = (cols >= vw.view(-1, 1)) & (cols < vw.view(-1, 1) + s)
    return (in_rows.view(-1, 1, h, 1) & in_cols.view(-1, 1, 1, w))


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = 1000,
           restarts: int = 1, p_init: float = 0.8, seed: int = 0, quantize: bool = True) -> torch.Tensor:
    """Square Attack images at one eps: float32 [B, 3, H, W] in [0, 255] (see the module docstring)."""
    return square_attack(model, x, y, eps, SquareConfig(queries, restarts, p_init, seed), quantize)


def square_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  config: SquareConfig | None = None, quantize: bool = True) -> torch.Tensor:
    """:func:`square` with its settings in one :class:`SquareConfig` (default: 1000 queries, 1 restart)."""
    config = config or SquareConfig()
    x0, y, eps, lo, hi = attack_inputs(x, y, eps, config, quantize)
    if x0.shape[0] == 0:
        return x0.clone()
    b, c, h, w = x0.shape
    gen = torch.Generator().manual_seed(int(config.seed))
    device = x0.device
    # Compacting the working set needs the flags on the host: every query on CPU, every 8th elsewhere.
    compact_every = 1 if device.type == "cpu" else 8
    out = x0.clone()
    with eval_mode(model), torch.no_grad():
        model = _inference_forward(model, device)                 # channels_last weights on CPU (attacks.py)
        remaining = margin(model(x0), y) > 0                      # misclassified clean: left as they are
        out_margin = torch.full((b,), float("inf"), device=device)
        for _ in range(config.restarts):
            stripes = (torch.rand((b, c, 1, w), generator=gen) < 0.5).to(device)
            idx = remaining.nonzero().flatten()
            if idx.numel() == 0:
                break
            cur = torch.where(stripes[idx], hi[idx], lo[idx])
            cur_margin = margin(model(cur), y[idx])
            for i in range(config.queries - 1):
                p = square_fraction(i, config.queries, config.p_init)
                s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
                vh = torch.randint(0, h - s + 1, (b,), generator=gen).to(device)[idx]
                vw = torch.randint(0, w - s + 1, (b,), generator=gen).to(device)[idx]
                up = (torch.rand((b, c, 1, 1), generator=gen) < 0.5).to(device)[idx]
                cand = torch.where(_window_mask(vh, vw, s, h, w), torch.where(up, hi[idx], lo[idx]), cur)
                cand_margin = margin(model(cand), y[idx])
                better = (cur_margin > 0) & (cand_margin < cur_margin)
                cur = torch.where(better.view(-1, 1, 1, 1), cand, cur)
                cur_margin = torch.where(better, cand_margin, cur_margin)
                if (i + 1) % compact_every == 0:
                    keep = cur_margin > 0
                    if not bool(keep.all()):
                        _merge(out, out_margin, idx[~keep], cur[~keep], cur_margin[~keep])
                        idx, cur, cur_margin = idx[keep], cur[keep], cur_margin[keep]
                        if idx.numel() == 0:
                            break
            _merge(out, out_margin, idx, cur, cur_margin)
            remaining &= out_margin > 0
    return out


def _merge(out, best_margin, idx, cur, cur_margin) -> None:
    """Keep, per patch, the image of lowest margin over restarts (a misclassified one is final)."""
    if idx.numel() == 0:
        return
    better = cur_margin < best_margin[idx]
    out[idx] = torch.where(better.view(-1, 1, 1, 1), cur, out[idx])
    best_margin[idx] = torch.where(better, cur_margin, best_margin[idx])


__all__ = ["SquareConfig", "square", "square_attack", "square_fraction", "margin"]

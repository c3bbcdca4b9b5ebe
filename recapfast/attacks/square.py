"""Square Attack, L-inf (Andriushchenko et al. 2020), in pixel units on the uint8 grid: black-box.

The attack only ever reads the model's logits: every query is a plain forward under
``torch.no_grad`` in eval mode; no gradient is computed anywhere, so it is blind to gradient
masking and is the check that a white-box number is not an artefact of broken gradients.

Every adversarial image lies on a vertex of the box ``[lo, hi]`` = ``[x - eps, x + eps]`` within
[0, 255] (with ``quantize``, the default, the integer box ``[ceil(x - eps), floor(x + eps)]``, so every
query is an image a PNG can hold, and a fractional eps acts as its floor).  Per restart and patch:

    init    : vertical stripes: each column of each channel at lo or hi, with probability 1/2
    query i : a square window of side s_i at a random position, each channel's window set to lo or hi
              (probability 1/2 each); a window that would leave the image unchanged (every pixel of it
              already at the drawn vertex) gets new signs until it changes something, as the reference
              redraws it, so no query is spent on an image already seen; accepted when the margin loss
              z_y - max_{j != y} z_j decreases
    stop    : as soon as the margin is <= 0 (misclassified), or after ``queries`` queries in all

s_i = max(1, round(sqrt(p_i * H * W))) (at most min(H, W)), with p_i = p_init halved at the
fractions 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000 of the query budget (the
schedule of the reference implementation, rescaled to the budget).  Unlike AutoAttack's batched
version, which moves one window for the whole batch, every patch draws its own window position
and signs (as in the original algorithm).  Every eps of a call runs in one batch of rows
(``recapfast.attacks.rows``); the stripes, positions and signs are drawn per patch from one seeded CPU
generator, for the whole batch, and shared by the patch's rows at every eps, so they do not depend on
the device or on which rows are still being attacked; the redrawn signs come from a second seeded
stream.  Restarts attack only the patches not yet misclassified.  Patches misclassified when clean are
returned unchanged; a patch never misclassified gets its lowest-margin image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from recapfast.attacks.apgd import AttackSettings, attack_inputs
from recapfast.attacks.rows import Board, LossGrad, compact_every, row_box

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
    attack_inputs(x, y, eps, config, quantize)
    return square_rows(model, x, y, [eps], config, quantize).out


def _window(vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int, cur, lo, hi, up):
    """(candidate, changed): the rows' windows set to lo or hi per channel (``up``), and whether that changes any
    pixel of the current image (a window already at its drawn vertex is a wasted query)."""
    mask = _window_mask(vh, vw, s, h, w)
    target = torch.where(up, hi, lo)
    cand = torch.where(mask, target, cur)
    return cand, (cand != cur).flatten(1).any(1)


def _draw(gen: torch.Generator, shape, device, patch):
    return (torch.rand(shape, generator=gen) < 0.5).to(device)[patch]


def square_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                config: SquareConfig | None = None, quantize: bool = True, attack: torch.Tensor | None = None,
                dominance: bool = False, clean_logits: torch.Tensor | None = None) -> Board:
    """Square at every eps of ``eps`` in one batch of rows: the :class:`recapfast.attacks.rows.Board` of the E * B
    rows (``attack``, ``dominance``, ``clean_logits`` as in :func:`recapfast.attacks.apgd.apgd_rows`)."""
    config = config or SquareConfig()
    eps = [float(e) for e in eps]
    x0, y = attack_inputs(x, y, min(eps, default=0.0), config, quantize)[:2]      # also checks every eps >= 0
    board = Board(x0, eps, higher_is_better=False, dominance=dominance)
    if x0.shape[0] == 0 or not eps:
        return board
    b, c, h, w = x0.shape
    gen = torch.Generator().manual_seed(int(config.seed))
    redraw = torch.Generator().manual_seed(int(config.seed) + 1)     # a separate stream: the main draws never shift
    device = x0.device
    every = compact_every(device)
    lg = LossGrad(model, device)
    if clean_logits is None:
        clean_logits = lg.logits(x0)
    todo = (margin(clean_logits, y) > 0).repeat(len(eps))
    if attack is not None:
        todo &= attack.reshape(-1).to(todo.device)
    for _ in range(config.restarts):
        stripes = torch.rand((b, c, 1, w), generator=gen) < 0.5              # one draw per patch, shared by its eps
        idx = (todo & ~board.fooled).nonzero().flatten()
        if idx.numel() == 0:
            break
        patch = board.patch[idx]
        lo, hi = row_box(x0[patch], board.row_eps[idx], quantize)
        cur = torch.where(stripes.to(device)[patch], hi, lo)
        yr = y[patch]
        cur_margin = margin(lg.logits(cur), yr)
        _settle(board, idx, cur, cur_margin)
        for i in range(config.queries - 1):
            if i % every == 0:
                keep = ~board.fooled[idx]
                if not bool(keep.all()):
                    idx, patch, lo, hi, cur, cur_margin, yr = (t[keep] for t in (idx, patch, lo, hi, cur, cur_margin,
                                                                                  yr))
                    if idx.numel() == 0:
                        break
            p = square_fraction(i, config.queries, config.p_init)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            vh = torch.randint(0, h - s + 1, (b,), generator=gen).to(device)[patch]
            vw = torch.randint(0, w - s + 1, (b,), generator=gen).to(device)[patch]
            up = _draw(gen, (b, c, 1, 1), device, patch)
            cand, changed = _window(vh, vw, s, h, w, cur, lo, hi, up)
            for _ in range(_REDRAWS):        # as the reference: new signs for a window that would change nothing
                if bool(changed.all()):
                    break
                up = torch.where(changed.view(-1, 1, 1, 1), up, _draw(redraw, (b, c, 1, 1), device, patch))
                cand, changed = _window(vh, vw, s, h, w, cur, lo, hi, up)
            cand_margin = margin(lg.logits(cand), yr)
            better = cand_margin < cur_margin
            cur = torch.where(better.view(-1, 1, 1, 1), cand, cur)
            cur_margin = torch.where(better, cand_margin, cur_margin)
            _settle(board, idx, cur, cur_margin)
    return board


_REDRAWS = 16        # a window whose every sign choice changes nothing (a box of one value there) stays a no-op


def _settle(board: Board, idx, cur, cur_margin) -> None:
    """Hand the rows' current images to the board: misclassified ones are final, the others offered."""
    wrong = cur_margin <= 0
    board.fool(idx[wrong], cur[wrong])
    board.offer(idx[~wrong], cur[~wrong], cur_margin[~wrong])


__all__ = ["SquareConfig", "square", "square_attack", "square_rows", "square_fraction", "margin"]

"""The model part of screening: each tile's p(recaptured), the image verdict, and the smallest flipping eps.

Per image (any size): the image is tiled into non-overlapping SxS patches (grid anchored at the
top-left corner, row-major; a remainder narrower than S is not screened), the detector gives each
tile p(recaptured), and the image's ``p_recaptured`` is the mean over its tiles.  ``decision`` is
``recaptured`` when p >= threshold (default 0.5), else ``original``.

Probing (``probe_eps``): the shared-gradient FGSM and LLCM sweep (one gradient per attack and
batch, every eps from it) is run on every tile; FGSM's label is the image's own decision (it
pushes the image away from it), LLCM's target is each tile's least likely class (paper eq. 3).
``flip_eps`` is the smallest probe eps at which either attack moves the image-level mean
probability across the threshold, or null; ``fragile`` is ``flip_eps <= fragile_eps`` (default
1 grey level: a perturbation of one grey level per pixel changes the verdict).  Forwards go
through the fast path (recapfast.ops) for a LaplacianCNN.
"""
from __future__ import annotations

import torch
from torch import nn

from recapfast.attacks.single_step import ATTACK_SIGN, _forward_chunks, eval_mode, input_gradients, signed_step
from recapfast.engine.screen.config import ScreenConfig
from recapfast.engine.screen.files import FileItem


def _probabilities(model: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """p(recaptured) of each tile, float64 [N] (pure forwards in chunks; the fast path for a LaplacianCNN)."""
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.float64, device=x.device)
    with eval_mode(model), torch.inference_mode():
        logits = _forward_chunks(model, x, chunk)
        return torch.softmax(logits.float(), dim=1)[:, 1].double()


def screen_batch(model: nn.Module, items: list[FileItem], config: ScreenConfig, device: torch.device) -> list[dict]:
    """Model results for the decodable items of one batch: per item p, tile map and flip eps."""
    good = [it for it in items if it.patches is not None]
    if not good:
        return []
    counts = torch.tensor([it.patches.shape[0] for it in good], device=device)
    x = torch.cat([it.patches for it in good]).to(device, non_blocking=True)
    file_of_tile = torch.repeat_interleave(torch.arange(len(good), device=device), counts)
    tile_p = _probabilities(model, x, config.probe_chunk * 4)
    p = torch.zeros(len(good), dtype=torch.float64, device=device).index_add_(0, file_of_tile, tile_p) / counts
    decision = (p >= config.threshold).long()
    eps = [float(e) for e in config.probe_eps]
    flip_eps: list = [None] * len(good)
    flip_attacks: list = [[] for _ in good]
    if eps:
        attacks = tuple(config.attacks)
        sums = _probe_sums(model, x, file_of_tile, counts, decision, attacks, eps, config)
        flipped = ((sums / counts) >= config.threshold).long() != decision                       # [A, E, F]
        flipped = flipped.cpu()
        for f in range(len(good)):
            for e, value in enumerate(eps):
                hits = [attacks[a] for a in range(len(attacks)) if bool(flipped[a, e, f])]
                if hits:
                    flip_eps[f], flip_attacks[f] = value, hits
                    break
    p_list, d_list, tile_p = p.cpu().tolist(), decision.cpu().tolist(), tile_p.cpu()
    results, offset = [], 0
    for f, it in enumerate(good):
        n = it.patches.shape[0]
        rows, cols = it.grid
        tiles = tile_p[offset:offset + n].reshape(rows, cols)
        offset += n
        results.append({"p": p_list[f], "decision": d_list[f], "flip_eps": flip_eps[f],
                        "flip_attacks": flip_attacks[f], "tile_map": tiles})
    return results


def _probe_sums(model: nn.Module, x: torch.Tensor, file_of_tile: torch.Tensor, counts: torch.Tensor,
                decision: torch.Tensor, attacks: tuple, eps: list, config: ScreenConfig) -> torch.Tensor:
    """Sums over each file's tiles of p(recaptured) under every (attack, eps): float64 [A, E, F].

    One gradient pass per chunk of tiles serves every eps.  The eps are taken in ascending order, and
    a file whose tiles all lie in the chunk stops being attacked once an eps flips its verdict: only
    the smallest flipping eps is reported, so its sums at larger eps are never read (they stay
    partial).  A file split across chunks is attacked at every eps, since its verdict needs tiles
    of other chunks.
    """
    device = x.device
    n_files = counts.shape[0]
    sums = torch.zeros((len(attacks), len(eps), n_files), dtype=torch.float64, device=device)
    last_tile = torch.cumsum(counts, 0) - 1
    first_tile = last_tile - counts + 1
    for start in range(0, x.shape[0], config.probe_chunk):
        stop = min(start + config.probe_chunk, x.shape[0])
        xc, fc = x[start:stop], file_of_tile[start:stop]
        _, grads = input_gradients(model, xc, decision[fc], attacks)
        inside = (first_tile >= start) & (last_tile < stop)            # files decided within this chunk
        active = torch.ones(stop - start, dtype=torch.bool, device=device)
        for e, value in enumerate(eps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, fa = xc.index_select(0, idx), fc.index_select(0, idx)
            for a, name in enumerate(attacks):
                adv = signed_step(xa, grads[name].index_select(0, idx), [value], ATTACK_SIGN[name])[0]
                sums[a, e].index_add_(0, fa, _probabilities(model, adv, config.probe_chunk * 4))
            flipped = (((sums[:, e] / counts) >= config.threshold).long() != decision).any(0)   # [F]
            active &= ~(flipped & inside)[fc]
    return sums

"""Localization: a tile-level map of P(recaptured), its PNG heatmap, and an IAP that fabricates it.

The map of an image is the detector applied to every non-overlapping SxS tile of the grid
anchored at the top-left corner (``recapfast.data.folder.to_patches(..., tile=True)``): probs[r, c] =
softmax(f(tile_rc))[recaptured].  Pixels right of / below the last full tile are not covered.

Map-fabricating attack (the analogue of Huang et al.'s attack on a segmentation output): given
a target map T[r, c] in {0 = original, 1 = recaptured, -1 = don't care}, an iterative targeted
attack in pixel units (the conventions of ``recapfast.attacks.iterative``: eval-mode gradients, step
``step_size`` grey levels, projection to the eps box and [0, 255], uint8 grid after every
step) descends sum_rc CE(f(tile_rc), t_rc), where t_rc = T[r, c] on the chosen tiles and, on
don't-care tiles, their own clean decision (so the rest of the map is held in place).  Success
is measured per tile: a chosen tile succeeds when its decision equals T[r, c]; a don't-care
tile is 'preserved' when its decision did not change.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from recapfast.io import atomic
from recapfast.attacks.single_step import eval_mode
from recapfast.errors import UserError
from recapfast.attacks.iterative import IterativeConfig, _box, _project, loss_gradient


def _chw(img) -> torch.Tensor:
    """[3, H, W] tensor of an [H, W, 3] numpy array or a [3, H, W] tensor."""
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3], got {img.shape}")
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(img.shape)}")
    return img


def tiles_of(img, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8/float tiles [rows*cols, 3, size, size] (row-major) and the grid (rows, cols)."""
    x = _chw(img)
    rows, cols = x.shape[1] // size, x.shape[2] // size
    if rows == 0 or cols == 0:
        raise ValueError(f"image {x.shape[2]}x{x.shape[1]} is smaller than the {size}x{size} tile")
    grid = x[:, :rows * size, :cols * size].reshape(3, rows, size, cols, size)
    return grid.permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, size, size), (rows, cols)


def untile(tiles: torch.Tensor, grid: tuple[int, int], base: torch.Tensor) -> torch.Tensor:
    """Write tiles [rows*cols, 3, S, S] back into a copy of ``base`` [3, H, W] (the inverse of :func:`tiles_of`)."""
    rows, cols = grid
    s = tiles.shape[-1]
    out = base.clone().to(tiles.dtype)
    block = tiles.reshape(rows, cols, 3, s, s).permute(2, 0, 3, 1, 4).reshape(3, rows * s, cols * s)
    out[:, :rows * s, :cols * s] = block
    return out


def tile_map(model: nn.Module, img, size: int = 64, batch: int = 256) -> torch.Tensor:
    """P(recaptured) per tile, float32 [rows, cols]."""
    tiles, (rows, cols) = tiles_of(img, size)
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        probs = torch.cat([torch.softmax(model(tiles[i:i + batch].to(device).float()), 1)[:, 1]
                           for i in range(0, tiles.shape[0], batch)])
    return probs.reshape(rows, cols).cpu()


def heatmap_image(img, probs: torch.Tensor, size: int, opacity: float = 0.5):
    """A PIL RGB image: the picture with each tile tinted blue (P=0, original) to red (P=1, recaptured)."""
    from PIL import Image

    x = _chw(img).permute(1, 2, 0).numpy().astype(np.float32)
    p = probs.numpy().astype(np.float32)
    color = np.stack([255 * p, np.zeros_like(p), 255 * (1 - p)], axis=-1)          # [rows, cols, 3]
    color = np.repeat(np.repeat(color, size, axis=0), size, axis=1)
    h, w = color.shape[:2]
    out = x.copy()
    out[:h, :w] = (1 - opacity) * x[:h, :w] + opacity * color
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


@dataclass
class HeatmapRecord:
    path: str
    heatmap: str | None
    grid: tuple[int, int] | None
    probs: list | None
    error: str | None = None


def write_heatmaps(model: nn.Module, samples: Sequence, root, out_dir, size: int = 64, min_tiles: int = 2,
                   progress: Callable[[int], None] | None = None) -> list[HeatmapRecord]:
    """For every image with at least ``min_tiles`` tiles, OUT/<relative path>.heatmap.png + OUT/heatmaps.json.

    ``samples`` are ``recapfast.data.folder.Sample``s under ``root`` (names mirror their paths relative to it).
    """
    from recapfast.data.folder import DecodeError, decode

    root, out_dir = Path(root), Path(out_dir)
    records = []
    for s in samples:
        try:
            img, _ = decode(s.path)
            if (img.shape[0] // size) * (img.shape[1] // size) < min_tiles:
                records.append(HeatmapRecord(s.path, None, None, None, f"fewer than {min_tiles} tiles"))
            else:
                probs = tile_map(model, img, size)
                try:
                    rel = Path(s.path).resolve().relative_to(root.resolve())
                except ValueError:
                    rel = Path(Path(s.path).name)
                dest = out_dir / rel.parent / atomic.fit_name(rel.stem, ".heatmap.png")   # heatmaps.json maps it
                picture = heatmap_image(img, probs, size)
                atomic.write_file(dest, writer=lambda fh: picture.save(fh, format="PNG"), root=out_dir, mkdir=True)
                records.append(HeatmapRecord(s.path, str(dest), tuple(probs.shape), probs.tolist()))
        except DecodeError as err:
            records.append(HeatmapRecord(s.path, None, None, None, str(err)))
        if progress is not None:
            progress(1)
    out_dir.mkdir(exist_ok=True)
    atomic.write_json(out_dir / "heatmaps.json",
                      {"tile": size, "p": "P(recaptured) per tile, row-major grid from the top-left corner",
                       "images": [r.__dict__ for r in records]}, indent=1, allow_nan=True)
    return records


@dataclass
class MapAttackResult:
    adversarial: torch.Tensor       # float32 [3, H, W] on the uint8 grid (when quantized)
    target: torch.Tensor            # [rows, cols] of 0/1/-1
    clean_probs: torch.Tensor       # [rows, cols]
    adversarial_probs: torch.Tensor
    tile_success: torch.Tensor      # bool [rows, cols]: chosen tile reads its target (False on don't-care)
    success_rate: float             # over chosen tiles
    preserved_rate: float           # don't-care tiles whose decision did not change (nan if none)
    linf: float


def region_target(grid: tuple[int, int], label: int, region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Target map: ``label`` on tiles rows r0:r1, cols c0:c1 of ``region`` (all tiles if None), -1 elsewhere."""
    t = torch.full(grid, -1, dtype=torch.long)
    if region is None:
        t[:] = label
    else:
        r0, r1, c0, c1 = region
        t[r0:r1, c0:c1] = label
    return t


def fabricate_map(model: nn.Module, img, target: torch.Tensor, eps: float, size: int = 64,
                  steps: int | None = None, step_size: float | None = None, quantize: bool = True) -> MapAttackResult:
    """Iterative IAP making the tile map read ``target`` (module docstring); returns the image and per-tile success."""
    x = _chw(img).to(torch.float32)
    tiles, grid = tiles_of(x, size)
    target = torch.as_tensor(target, dtype=torch.long)
    if tuple(target.shape) != grid:
        raise UserError(f"target map is {tuple(target.shape)}, the image has a {grid[0]}x{grid[1]} tile grid")
    device = next(model.parameters()).device
    tiles = tiles.to(device)
    n, alpha = IterativeConfig(steps, step_size).resolve(eps)
    with eval_mode(model), torch.no_grad():
        clean_logits = model(tiles)
    clean_pred = clean_logits.argmax(1)
    flat_t = target.reshape(-1).to(device)
    chosen = flat_t >= 0
    goal = torch.where(chosen, flat_t, clean_pred)
    lo, hi = _box(tiles, float(eps), quantize)
    adv = tiles.clone()
    for _ in range(n):
        _, grad = loss_gradient(model, adv, goal)
        adv = _project(adv - alpha * torch.sign(grad), lo, hi, quantize)
    with eval_mode(model), torch.no_grad():
        adv_logits = model(adv)
    adv_pred = adv_logits.argmax(1)
    success = (adv_pred == flat_t) & chosen
    kept = ~chosen
    out = untile(adv.cpu(), grid, x)
    return MapAttackResult(
        adversarial=out, target=target, clean_probs=torch.softmax(clean_logits, 1)[:, 1].reshape(grid).cpu(),
        adversarial_probs=torch.softmax(adv_logits, 1)[:, 1].reshape(grid).cpu(),
        tile_success=success.reshape(grid).cpu(),
        success_rate=float(success.sum() / chosen.sum()) if chosen.any() else float("nan"),
        preserved_rate=float((adv_pred == clean_pred)[kept].float().mean()) if kept.any() else float("nan"),
        linf=float((out - x).abs().max()))


def check_output_dir(out_dir, force: bool) -> None:
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty (use --force to write into it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is not a folder")
    out_dir.mkdir(exist_ok=True)      # recapfast creates only the last component of an output path


__all__ = ["tile_map", "tiles_of", "untile", "heatmap_image", "write_heatmaps", "region_target", "fabricate_map",
           "MapAttackResult", "HeatmapRecord"]

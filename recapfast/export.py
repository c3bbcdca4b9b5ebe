"""Write adversarial images of a folder as uint8 PNGs that mirror its tree, plus a manifest."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .attacks import sweep
from .data import CLASS_NAMES, UNLABELLED, DataError, PatchDataset, discover, make_loader


@dataclass
class ExportResult:
    attack: str
    eps: float
    files: int
    patches: int
    written: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    correct: int = 0
    labelled: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else float("nan")


def output_name(rel: str, tile_rc: tuple[int, int] | None) -> str:
    """PNG name for a source file: x.png stays x.png; x.jpg becomes x.jpg.png (no collisions)."""
    base = rel if rel.lower().endswith(".png") else rel + ".png"
    if tile_rc is None:
        return base
    stem = base[:-4]
    return f"{stem}_r{tile_rc[0]:03d}_c{tile_rc[1]:03d}.png"


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def export_adversarial(
    model: nn.Module,
    root,
    out,
    attack: str,
    eps: float,
    size: int = 64,
    tile: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    model_name: str = "",
    class_names: Sequence[str] = CLASS_NAMES,
    progress: Callable[[int], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    iterative=None,
    extra=None,
) -> ExportResult:
    """Adversarial patches of every file of ``root`` written under ``out`` at the same relative path."""
    from PIL import Image

    root, out = Path(root), Path(out)
    labelled = any((root / name).is_dir() for name in class_names)
    if attack not in ("llcm", "illc") and not labelled:
        raise DataError(f"{root}: {attack.upper()} needs true labels ({'/ and '.join(class_names)}/ folders)")
    samples = discover(root, class_names, labelled=labelled)
    loader = make_loader(PatchDataset(samples, size, tile), batch_size, workers)
    device = next(model.parameters()).device
    result = ExportResult(attack, float(eps), 0, 0)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for batch in loader:
        for index, reason in batch.errors:
            result.errors.append({"path": samples[index].path, "error": reason})
            if on_error is not None:
                on_error(samples[index].path, reason)
        if batch.x.shape[0]:
            y = batch.y.to(device)
            if attack in ("fgsm", "llcm"):
                res = sweep(model, batch.x.to(device), y if labelled else None, [eps], [attack], return_images=True)
                adv, preds, clean = res.images[attack][0], res.predictions[attack][0], res.clean_predictions
            else:                       # iterative, apgd, square (recapfast.trust)
                from .trust import attack_batch

                adv, preds, clean = attack_batch(model, batch.x.to(device), y if labelled else None, eps, attack,
                                                 iterative, extra)
            images = adv.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            preds, clean = preds.cpu(), clean.cpu()
            ok = preds == batch.y
            if labelled:
                result.correct += int(ok.sum())
                result.labelled += int(ok.numel())
            first = 0
            for index in batch.files:
                rows, cols = batch.grids[index]
                count = rows * cols
                src = samples[index].path
                rel = os.path.relpath(src, root)
                outputs = []
                for k in range(count):
                    name = output_name(rel, divmod(k, cols) if tile else None)
                    dst = out / name
                    if not _inside(out, dst):
                        raise DataError(f"{src}: output path {dst} would leave {out}")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_name(dst.name + ".tmp")
                    Image.fromarray(np.ascontiguousarray(images[first + k])).save(tmp, format="PNG")
                    os.replace(tmp, dst)
                    outputs.append(name)
                result.written.append({
                    "source": rel, "outputs": outputs,
                    "label": None if samples[index].label == UNLABELLED else samples[index].label,
                    "clean_prediction": clean[first:first + count].tolist(),
                    "adversarial_prediction": preds[first:first + count].tolist()})
                result.files += 1
                result.patches += count
                first += count
        if progress is not None:
            progress(len(batch.files) + len(batch.errors))
    result.seconds = time.perf_counter() - start
    manifest = {"attack": attack, "eps": float(eps), "model": model_name, "size": size, "tile": tile,
                "source": str(root), "files": result.files, "patches": result.patches,
                "adversarial_accuracy": None if not result.labelled else result.accuracy,
                "quantized": True, "written": result.written, "errors": result.errors}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")
    return result

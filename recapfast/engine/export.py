"""Write adversarial images of a folder as uint8 PNGs that mirror its tree, plus a manifest.

Attacks: fgsm and llcm (``recapfast.sweep``) and the iterative bim, illc, pgd and mifgsm
(``recapfast.attacks.iterative``).  What is written: the center crop of each file (default), every
tile (``tile``: one PNG per tile), or the whole image (``full_size``: every tile of the grid is
attacked and put back in place, pixels right of / below the last full tile are kept), so
``eval --tile`` on a full-size output sees exactly the attacked tiles.

Crash safety and resume: every PNG is written atomically (recapfast.io.atomic) and, after each
batch, one line per finished source file is appended to ``OUT/manifest.jsonl`` (first line: the
settings) and fsynced.  ``resume`` skips every source the log already holds (after checking the
settings match) and continues; ``manifest.json`` (the summary over the whole log) is written
atomically at the end.  The output folder is locked for the whole run (recapfast.io.lock).
"""
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

from recapfast.io import atomic
from recapfast.attacks.single_step import ATTACKS, sweep
from recapfast.data.folder import CLASS_NAMES, UNLABELLED, DataError, DecodeError, PatchDataset, decode, discover, make_loader, \
    to_patches
from recapfast.attacks.iterative import ITERATIVE_ATTACKS, IterativeConfig, sweep_iterative
from recapfast.io.lock import lock_outputs
from recapfast.engine.trust import EXTRA_ATTACKS

LOG_NAME, MANIFEST_NAME = "manifest.jsonl", "manifest.json"
NEEDS_LABELS = ("fgsm", "bim", "pgd", "mifgsm") + EXTRA_ATTACKS


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
    skipped: int = 0                 # sources already in the log (resume)

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else float("nan")


def output_name(rel: str, tile_rc: tuple[int, int] | None) -> str:
    """PNG name for a source file: x.png stays x.png; x.jpg becomes x.jpg.png (no collisions).  A name over 255
    bytes is shortened with a hash (``atomic.fit_name``); the manifest maps every source to its outputs."""
    folder, name = os.path.split(rel)
    stem = name[:-4] if name.lower().endswith(".png") else name
    suffix = ".png" if tile_rc is None else f"_r{tile_rc[0]:03d}_c{tile_rc[1]:03d}.png"
    return os.path.join(folder, atomic.fit_name(stem, suffix))


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def read_log(path: Path) -> tuple[dict | None, list[dict]]:
    """(settings, entries) of a manifest log; a torn last line (crash mid-write) is ignored."""
    settings, entries = None, []
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                obj = json.loads(raw)
            except ValueError:
                raise DataError(f"{path}: not a recapfast attack log; not resuming over it") from None
            if settings is None:
                if not isinstance(obj, dict) or "settings" not in obj:
                    raise DataError(f"{path}: not a recapfast attack log; not resuming over it")
                settings = obj["settings"]
            else:
                entries.append(obj)
    return settings, entries


def _attack_batch(model, x, y, attack, eps, iterative, extra=None):
    """(adversarial uint8 [N, 3, H, W], clean predictions, adversarial predictions) for one batch."""
    if attack in EXTRA_ATTACKS:         # apgd, square (recapfast.engine.trust; ``extra``: its TrustConfig)
        from recapfast.engine.trust import attack_batch

        adv, preds, clean = attack_batch(model, x, y, eps, attack, iterative, extra)
        return adv, clean.cpu(), preds.cpu()
    if attack in ATTACKS:
        res = sweep(model, x, y, [eps], [attack], return_images=True)
    else:
        res = sweep_iterative(model, x, y, [eps], [attack], quantize=True, config=iterative, return_images=True)
    return res.images[attack][0].to(torch.uint8), res.clean_predictions.cpu(), res.predictions[attack][0].cpu()


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
    full_size: bool = False,
    resume: bool = False,
    force: bool = False,
    iterative: IterativeConfig | None = None,
    extra=None,
) -> ExportResult:
    """Adversarial images of every file of ``root`` written under ``out`` at the same relative path.

    Raises DataError (after writing the manifest) when no file could be used at all.
    """
    root, out = Path(root), Path(out)
    if attack not in ATTACKS + ITERATIVE_ATTACKS + EXTRA_ATTACKS:
        raise DataError(f"--attack {attack!r}: choose from {', '.join(ATTACKS + ITERATIVE_ATTACKS + EXTRA_ATTACKS)}")
    if tile and full_size:
        raise DataError("--tile and --full-size exclude each other (tiles as files, or the whole image)")
    if resume and force:
        raise DataError("--resume and --force exclude each other (resume keeps the output, force replaces it)")
    labelled = any((root / name).is_dir() for name in class_names)
    if attack in NEEDS_LABELS and not labelled:
        raise DataError(f"{root}: {attack.upper()} needs true labels ({'/ and '.join(class_names)}/ folders)")
    iterative = iterative or IterativeConfig()
    settings = {"attack": attack, "eps": float(eps), "model": model_name, "size": size, "tile": tile,
                "full_size": full_size, "source": str(root), "quantized": True,
                "iterative": None if attack not in ITERATIVE_ATTACKS else
                {"steps": iterative.steps, "step_size": iterative.step_size, "seed": iterative.seed}}
    if attack in EXTRA_ATTACKS:
        from dataclasses import asdict

        from recapfast.engine.trust import TrustConfig

        # as JSON reads it back (tuples as lists), so that --resume compares like with like
        settings["attack_settings"] = json.loads(json.dumps(asdict(getattr(extra or TrustConfig(), attack))))
    samples = discover(root, class_names, labelled=labelled)
    with lock_outputs(out):
        log_path = _prepare(out, settings, resume, force)
        done = set()
        if resume and log_path.exists():
            done = {e["source"] for e in read_log(log_path)[1]}
        log = atomic.AppendFile(log_path, root=out)
        try:
            if log_path.stat().st_size == 0:
                log.write_lines([_line({"settings": settings})])
            result = ExportResult(attack, float(eps), 0, 0)
            todo = [s for s in samples if os.path.relpath(s.path, root) not in done]
            result.skipped = len(samples) - len(todo)
            if progress is not None and result.skipped:
                progress(result.skipped)
            start = time.perf_counter()
            device = next(model.parameters()).device
            units = _full_size_units(todo, size) if full_size else _batch_units(todo, size, tile, batch_size, workers)
            for entries, x, y, grids in units:
                lines = []
                if x is not None and x.shape[0]:
                    adv, clean, preds = _attack_batch(model, x.to(device), y.to(device) if labelled else None,
                                                      attack, eps, iterative, extra)
                    lines = _write_outputs(out, root, entries, grids, adv.permute(0, 2, 3, 1).cpu().numpy(),
                                           clean, preds, tile, full_size)
                for entry in entries:
                    if entry.get("error") is not None:
                        entry["source"] = os.path.relpath(entry["sample"].path, root)
                        lines.append(entry)
                        if on_error is not None:
                            on_error(entry["path"], entry["error"])
                log.write_lines([_line({k: v for k, v in e.items() if k not in ("path", "image", "sample")})
                                 for e in lines])
                if progress is not None:
                    progress(len(entries))
        finally:
            log.close()
        result.seconds = time.perf_counter() - start
        _finish(out, log_path, result)
    if result.files == 0:
        first = f" (first: {result.errors[0]['source']}: {result.errors[0]['error']})" if result.errors else ""
        raise DataError(f"{root}: no file could be used; {len(result.errors)} skipped{first}")
    return result


def _prepare(out: Path, settings: dict, resume: bool, force: bool) -> Path:
    """Create/check the output folder (its parent must exist) and return the log path."""
    log_path = out / LOG_NAME
    if out.is_symlink():
        raise DataError(f"--out {out}: is a symbolic link; give a real folder")
    if not out.exists():
        if not out.parent.is_dir():
            raise DataError(f"--out {out}: folder {out.parent} does not exist (recapfast creates only the last "
                            f"component of an output path)")
        with atomic.disk_errors(out):
            out.mkdir()
    elif not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    if resume:
        if log_path.exists():
            saved, _ = read_log(log_path)
            if saved is not None:
                differ = [k for k in settings if saved.get(k) != settings[k]]
                if differ:
                    raise DataError(f"--resume: {out} was written with other settings ({', '.join(differ)}); use "
                                    f"the same ones, or --force to start over")
        elif any(out.iterdir()):
            raise DataError(f"--resume: {out} holds no {LOG_NAME} (not written by `recapfast attack`, or by an "
                            f"older version); use --force to write into it")
    else:
        if any(p.name not in (LOG_NAME,) for p in out.iterdir()) and not force:
            raise DataError(f"--out {out}: exists and is not empty (use --resume to continue it, or --force)")
        if log_path.exists() and not force:
            raise DataError(f"--out {out}: holds an unfinished {LOG_NAME} (use --resume to continue it, or --force)")
        atomic.remove(log_path)
    return log_path


def _batch_units(samples, size, tile, batch_size, workers):
    """(entries, x, y, grids) per DataLoader batch: center crops or tiles of several files."""
    loader = make_loader(PatchDataset(samples, size, tile), batch_size, workers)
    for batch in loader:
        entries = [{"sample": samples[i], "index": i} for i in batch.files]
        entries += [{"source": None, "sample": samples[i], "path": samples[i].path, "error": reason}
                    for i, reason in batch.errors]
        yield entries, batch.x, batch.y, [batch.grids[i] for i in batch.files]


def _full_size_units(samples, size):
    """(entries, tiles, y, grids) per file: the whole decoded image is kept to paste the tiles back."""
    for sample in samples:
        try:
            img, _ = decode(sample.path)
            tiles = to_patches(img, size, tile=True)
        except DecodeError as err:
            yield [{"source": None, "sample": sample, "path": sample.path, "error": str(err)}], None, None, []
            continue
        grid = (img.shape[0] // size, img.shape[1] // size)
        y = torch.full((tiles.shape[0],), max(sample.label, 0), dtype=torch.long)
        yield [{"sample": sample, "image": img}], tiles, y, [grid]


def _write_outputs(out, root, entries, grids, images, clean, preds, tile, full_size) -> list[dict]:
    lines, first = [], 0
    good = [e for e in entries if e.get("error") is None]
    for entry, (rows, cols) in zip(good, grids):
        sample = entry["sample"]
        rel = os.path.relpath(sample.path, root)
        count = rows * cols if (tile or full_size) else 1
        names = []
        if full_size:
            full = entry["image"].copy()
            size = images.shape[1]
            for k in range(count):
                r, c = divmod(k, cols)
                full[r * size:(r + 1) * size, c * size:(c + 1) * size] = images[first + k]
            names.append(output_name(rel, None))
            atomic.write_file(out / names[0], _png(full), root=out, mkdir=True)
        else:
            for k in range(count):
                names.append(output_name(rel, divmod(k, cols) if tile else None))
                atomic.write_file(out / names[-1], _png(images[first + k]), root=out, mkdir=True)
        lines.append({"source": rel, "outputs": names,
                      "label": None if sample.label == UNLABELLED else sample.label,
                      "clean_prediction": clean[first:first + count].tolist(),
                      "adversarial_prediction": preds[first:first + count].tolist()})
        first += count
    return lines


def _finish(out: Path, log_path: Path, result: ExportResult) -> None:
    """manifest.json over the whole log (this run and the ones it resumed), written atomically."""
    settings, entries = read_log(log_path)
    for e in entries:
        if e.get("error") is not None:
            result.errors.append({"source": e["source"], "path": os.path.join(settings["source"], e["source"]),
                                  "error": e["error"]})
            continue
        result.written.append(e)
        result.files += 1
        result.patches += len(e["adversarial_prediction"])
        if e.get("label") is not None:
            result.correct += sum(int(p == e["label"]) for p in e["adversarial_prediction"])
            result.labelled += len(e["adversarial_prediction"])
    manifest = dict(settings, files=result.files, patches=result.patches,
                    adversarial_accuracy=None if not result.labelled else result.accuracy,
                    written=result.written, errors=result.errors)
    atomic.write_json(out / MANIFEST_NAME, manifest, indent=1, root=out)


__all__ = ["ExportResult", "export_adversarial", "output_name", "read_log"]

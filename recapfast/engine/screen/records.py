"""The screening output: record schema, JSON Lines writer, resume index and repair, summary and CSV.

Output: JSON Lines, one record per discovered file, in discovery (sorted path) order, appended
with one ``os.write`` per complete line and fsynced after every batch, so a ``kill -9`` loses at
most the batch being written and never leaves a torn line that ``resume`` cannot repair.  The
summary is written at the end, atomically (recapfast.io.atomic).  Tile maps with more tiles than
``tile_map_inline`` go to a side file in ``<out>.tiles/``.  See docs/screening.md for the schema.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from recapfast.io import atomic
from recapfast.io.atomic import OutputError
from recapfast.runtime import settings as runtime_settings

if TYPE_CHECKING:
    from recapfast.engine.screen.config import ScreenConfig
    from recapfast.engine.screen.files import FileItem

RECORD_VERSION = 1


# ----------------------------------------------------------------------------- paths and names

def display_path(path: str) -> str:
    """A valid-Unicode rendering of a path: undecodable bytes of a non-UTF-8 name become ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_fields(path: str) -> dict:
    """``path`` (always valid JSON text) and, for a non-UTF-8 name, ``path_hex`` (the exact bytes)."""
    shown = display_path(path)
    if shown is path:
        return {"path": path}
    return {"path": shown, "path_hex": os.fsencode(path).hex()}


def record_path_bytes(record: dict) -> bytes:
    if record.get("path_hex"):
        return bytes.fromhex(record["path_hex"])
    return record["path"].encode("utf-8")


def _clean(value):
    """Strings as valid Unicode (no lone surrogates from odd file names inside messages)."""
    if isinstance(value, str):
        return display_path(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# ----------------------------------------------------------------------------- records and resume keys

def stat_key(path: str, size, mtime_ns) -> tuple:
    return ("stat", os.fsencode(path), size, mtime_ns)


def record_key(record: dict, resume_by: str) -> tuple:
    if resume_by == "sha256" and record.get("sha256"):
        return ("sha256", record["sha256"])
    return ("stat", record_path_bytes(record), record.get("bytes"), record.get("mtime_ns"))


def make_record(item: FileItem, result: dict | None, config: ScreenConfig, out: Path) -> dict:
    """The output record of one file: an error record, or the verdict, probe result and tile map."""
    rec = path_fields(item.path)
    rec.update({"bytes": item.size, "mtime_ns": item.mtime_ns, "sha256": item.sha256})
    if item.error is not None or result is None:
        rec.update({"width": item.width, "height": item.height, "error": item.error, "reason": item.reason})
        return rec
    tiles = int(item.patches.shape[0])
    p = result["p"]
    flip = result["flip_eps"]
    rec.update({
        "width": item.width, "height": item.height, "tiles": tiles,
        "grid": list(item.grid),
        "p_recaptured": _number(p, 6),
        "decision": "recaptured" if result["decision"] == 1 else "original",
        "flip_eps": flip,
        "flip_attacks": result["flip_attacks"] if config.probed else None,
        "fragile": (flip is not None and flip <= config.fragile_eps) if config.probed else None,
        "notes": item.notes,
    })
    tile_map = [[_number(v, 4) for v in row] for row in result["tile_map"].tolist()]
    if tiles <= config.tile_map_inline:
        rec["tile_map"] = tile_map
    else:
        folder = tiles_dir(out)
        name = f"{item.index:09d}.json"
        atomic.write_json(folder / name, {"path": rec["path"], "grid": list(item.grid), "size": config.size,
                                          "tile_map": tile_map}, root=out.parent, mkdir=True)
        rec["tile_map"] = None
        rec["tile_map_file"] = f"{folder.name}/{name}"
    return rec


def _number(value: float, digits: int) -> float:
    return float(round(value, digits))


# ----------------------------------------------------------------------------- output files

def summary_path(out: Path) -> Path:
    return out.with_suffix(".summary.json") if out.suffix else out.with_name(out.name + ".summary.json")


def tiles_dir(out: Path) -> Path:
    return out.with_name((out.stem if out.suffix else out.name) + ".tiles")


def refuse_links(*paths: Path) -> None:
    for p in paths:
        if p.is_symlink():
            raise OutputError(f"{p}: is a symbolic link; recapfast writes only plain files inside the output folder")


class RecordWriter(atomic.AppendFile):
    """Append-only JSON Lines: one ``os.write`` per complete line, fsync after every batch (recapfast.io.atomic)."""

    def write_batch(self, records: Iterable[dict]) -> int:
        return self.write_lines([(json.dumps(_clean(r), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
                                  + "\n").encode("utf-8") for r in records])


def repair_and_index(path: Path, resume_by: str) -> tuple[set, int, int]:
    """Truncate a torn last line (a crash mid-write) and return (done keys, records, bytes cut).

    The index holds one small key per finished file only, never the records themselves.
    """
    done: set = set()
    if not path.exists():
        return done, 0, 0
    size = path.stat().st_size
    cut = 0
    with open(path, "rb") as fh:
        if size:
            # Find the end of the last complete line by scanning back from the end.
            pos, tail = size, b""
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                fh.seek(pos)
                tail = fh.read(step) + tail
                nl = tail.rfind(b"\n")
                if nl >= 0:
                    good_end = pos + nl + 1
                    break
            else:
                good_end = 0
            cut = size - good_end
    if cut:
        with atomic.disk_errors(path), os.fdopen(os.open(path, os.O_RDWR | atomic.O_NOFOLLOW), "r+b") as fh:
            fh.truncate(size - cut)
            os.fsync(fh.fileno())
    records = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                record = json.loads(raw)
            except ValueError as err:
                raise OutputError(f"{path}: line {lineno} is not a screening record ({err}); "
                                  f"not resuming over a file recapfast did not write") from err
            done.add(record_key(record, resume_by))
            if resume_by == "sha256" and not record.get("sha256"):
                done.add(("stat", record_path_bytes(record), None, None))
            records += 1
    return done, records, cut


def iter_records(path: Path) -> Iterator[dict]:
    with open(path, "rb") as fh:
        for raw in fh:
            yield json.loads(raw)


def model_fingerprint(model) -> str:
    """sha256 of the model's state (names, dtypes, shapes, values): the same --model path with other weights
    is another model."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_settings(config: ScreenConfig, fingerprint: str) -> dict:
    """What makes two runs' records comparable: recorded in an output's first record, checked by --resume."""
    return {"model": config.model, "model_sha256": fingerprint, "size": config.size,
            "probe_eps": list(config.probe_eps), "attacks": list(config.attacks), "threshold": config.threshold,
            "fragile_eps": config.fragile_eps, "max_pixels": config.max_pixels, "record_version": RECORD_VERSION}


def check_resume_settings(path: Path, settings: dict) -> bool:
    """Refuse to resume ``path`` when its first record holds other settings; False when it holds none (an output
    of an older recapfast: not checked)."""
    if not path.exists():
        return True
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        saved = json.loads(first).get("settings") if first.endswith(b"\n") else None
    except (ValueError, AttributeError):
        saved = None
    if not isinstance(saved, dict):
        return not first
    differ = [k for k in settings if saved.get(k) != settings[k]]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} now {settings[k]!r}" for k in differ if k != "model_sha256")
        if "model_sha256" in differ:
            shown = ", ".join(x for x in (shown, "the model's weights") if x)
        raise OutputError(f"--resume: {path} was written with other settings ({shown}); use the same ones, or "
                          f"--force to start over")
    return True


def summarize(path: Path, processed: int, skipped: int, seconds: float, tiles: int, config: ScreenConfig,
              world: int = 1) -> dict:
    """Counts over the whole output file (streamed), plus this run's throughput."""
    decisions, errors = Counter(), Counter()
    records = fragile = probed = 0
    flip_hist = Counter()
    for record in iter_records(path):
        records += 1
        if record.get("error"):
            errors[record["error"]] += 1
            continue
        decisions[record["decision"]] += 1
        if record.get("flip_eps") is not None:
            flip_hist[f"{record['flip_eps']:g}"] += 1
        if record.get("fragile") is not None:
            fragile += bool(record["fragile"])
            probed += 1
    return {
        "output": path.name,
        "records": records,
        "screened": sum(decisions.values()),
        "errors": sum(errors.values()),
        "decisions": {"original": decisions.get("original", 0), "recaptured": decisions.get("recaptured", 0)},
        "fragile": fragile if probed else None,
        "flip_eps_histogram": dict(sorted(flip_hist.items(), key=lambda kv: float(kv[0]))),
        "errors_by_reason": dict(sorted(errors.items())),
        "this_run": {
            "files_processed": processed,
            "files_skipped_as_done": skipped,
            "tiles": tiles,
            "seconds": round(seconds, 3),
            "images_per_second": round(processed / seconds, 2) if seconds > 0 else None,
            "tiles_per_second": round(tiles / seconds, 2) if seconds > 0 else None,
            "ranks": world,
            "compute": runtime_settings(),
        },
        "settings": {"size": config.size, "threshold": config.threshold, "probe_eps": list(config.probe_eps),
                     "attacks": list(config.attacks), "fragile_eps": config.fragile_eps,
                     "max_pixels": config.max_pixels, "record_version": RECORD_VERSION},
    }


CSV_COLUMNS = ("path", "bytes", "sha256", "width", "height", "tiles", "p_recaptured", "decision", "flip_eps",
               "fragile", "notes", "error", "reason")


def write_csv(jsonl: Path, csv_path: Path) -> None:
    """The records as CSV (no tile maps), streamed, written atomically."""
    import csv

    def fill(fh) -> None:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in iter_records(jsonl):
            row = dict(r, notes="; ".join(r.get("notes") or []))
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])

    atomic.write_file(csv_path, writer=atomic.text_writer(fill, newline=""))

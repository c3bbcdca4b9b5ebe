"""Bulk forensic screening: stream a folder, one JSON record per image, resumable and crash-safe.

Per image (any size): the image is tiled into non-overlapping SxS patches (grid anchored at the
top-left corner, row-major; a remainder narrower than S is not screened), the detector gives each
tile p(recaptured), and the image's ``p_recaptured`` is the mean over its tiles.  ``decision`` is
``recaptured`` when p >= threshold (default 0.5), else ``original``.

Probing (``probe_eps``): the shared-gradient FGSM and LLCM sweep (one gradient per attack and
batch, every eps from it) is run on every tile; FGSM's label is the image's own decision (it
pushes the image away from it), LLCM's target is each tile's least likely class (paper eq. 3).
``flip_eps`` is the smallest probe eps at which either attack moves the image-level mean
probability across the threshold, or null; ``fragile`` is ``flip_eps <= fragile_eps`` (default
1 grey level: a perturbation of one grey level per pixel changes the verdict).

Output: JSON Lines, one record per discovered file, in discovery (sorted path) order, appended
with one ``os.write`` per complete line and fsynced after every batch, so a ``kill -9`` loses at
most the batch being written and never leaves a torn line that ``resume`` cannot repair.  The
summary is written at the end, atomically (recapfast.io.atomic).  Each file's header is checked
before its body is read (recapfast.data.header).  The output is locked for the whole run
(recapfast.io.lock): a second writer, fresh or resuming, is refused.  See README for the schema.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from recapfast.runtime import settings as runtime_settings
from recapfast.io import atomic
from recapfast.data import header as imagehead
from recapfast import validate
from recapfast.engine import distributed as dist_helpers
from recapfast.io.atomic import OutputError
from recapfast.attacks.single_step import ATTACK_SIGN, ATTACKS, _forward_chunks, eval_mode, input_gradients
from recapfast.data.folder import IMAGE_EXTENSIONS, DataError, DecodeError, decode, to_patches
from recapfast.io.lock import lock_outputs
from recapfast import ops

SCREEN_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}
RECORD_VERSION = 1


@dataclass
class ScreenConfig:
    size: int = 64
    probe_eps: tuple = (1.0, 2.0, 3.0, 4.0, 5.0)
    attacks: tuple = ATTACKS
    threshold: float = 0.5
    fragile_eps: float = 1.0
    max_pixels: int = 50_000_000
    batch_size: int = 32              # files per batch (one fsync per batch)
    max_batch_tiles: int = 2048       # a batch also ends once it holds this many tiles
    probe_chunk: int = 128            # tiles per gradient/adversarial forward chunk (one sweep)
    tile_map_inline: int = 256        # tile maps with more tiles go to a side file
    workers: int = 0
    resume_by: str = "stat"           # "stat": (path, size, mtime); "sha256": file content

    def validate(self) -> None:
        checks = [
            (self.size >= 8, f"--size must be >= 8 pixels, got {self.size}"),
            (self.max_pixels >= 1, f"--max-pixels must be >= 1, got {self.max_pixels}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.resume_by in ("stat", "sha256"), f"--resume-by must be stat or sha256, got {self.resume_by!r}"),
            (all(a in ATTACK_SIGN for a in self.attacks), f"unknown attack in {list(self.attacks)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(message)
        self.threshold = validate.number(self.threshold, "--threshold", 0.0, 1.0)
        self.fragile_eps = validate.number(self.fragile_eps, "--fragile-eps", 0.0, validate.MAX_EPS)
        self.probe_eps = tuple(sorted(validate.check_eps(self.probe_eps or (), "--probe-eps")))

    @property
    def probed(self) -> bool:
        return bool(self.probe_eps)


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


def iter_screen_files(root: str | os.PathLike) -> Iterator[str]:
    """Candidate image files under ``root`` (recursive), sorted per folder, depth first, streamed.

    Unlike the training loader, broken symlinks, symlink loops and special files with an image
    extension are yielded too: screening reports them as error records instead of hiding them.
    Folders reached through symbolic links are not entered (no loops); unreadable folders are skipped.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        yield root
        return
    try:
        with os.scandir(root) as it:
            # Names only (not DirEntry objects): the one listing held at a time stays small.
            names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError:
        return
    for name, is_dir in names:
        path = os.path.join(root, name)
        if is_dir:
            yield from iter_screen_files(path)
        elif os.path.splitext(name)[1].lower() in SCREEN_EXTENSIONS and not os.path.isdir(path):
            yield path


# ----------------------------------------------------------------------------- per-file loading

@dataclass
class FileItem:
    """One discovered file after reading + decoding (in a worker or in-process)."""

    index: int
    path: str
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    notes: list = field(default_factory=list)
    patches: torch.Tensor | None = None
    grid: tuple = (0, 0)
    error: str | None = None
    reason: str | None = None
    skipped: bool = False             # already in the output (resume)


def stat_key(path: str, size, mtime_ns) -> tuple:
    return ("stat", os.fsencode(path), size, mtime_ns)


def record_key(record: dict, resume_by: str) -> tuple:
    if resume_by == "sha256" and record.get("sha256"):
        return ("sha256", record["sha256"])
    return ("stat", record_path_bytes(record), record.get("bytes"), record.get("mtime_ns"))


def _os_error(path: str, err: OSError) -> tuple[str, str]:
    """(error code, reason) for a file that cannot be opened or read."""
    code = err.errno
    if code in (errno.EACCES, errno.EPERM):
        return "permission_denied", "permission denied (cannot read the file)"
    if code == errno.ELOOP:
        return "symlink_loop", "symbolic link loop"
    if code == errno.ENOENT:
        if os.path.islink(path):
            return "broken_symlink", f"broken symbolic link (target {display_path(os.readlink(path))!s} missing)"
        return "vanished", "file vanished between discovery and reading"
    if code == errno.EISDIR:
        return "not_a_regular_file", "a folder, not a file"
    return "read_error", f"{type(err).__name__}: {display_path(err.strerror or str(err))}"


def _decode_code(message: str) -> str:
    """Error code of a DecodeError message (DecodeError.code is used when set)."""
    if message.startswith("empty file"):
        return "empty_file"
    if "decompression bomb" in message:
        return "decompression_bomb"
    if "exceeds the pixel limit" in message:
        return "too_many_pixels"
    if "smaller than" in message:
        return "too_small"
    return "undecodable"


def read_file(path: str, max_pixels: int | None = None) -> tuple[bytes, os.stat_result]:
    """The whole file and its stat, from one open descriptor (refuses FIFOs, devices, folders).

    Header first: the header is checked (recapfast.data.header; DecodeError) before the body is
    read, and at most the size fstat reported is read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file") if stat.S_ISDIR(st.st_mode) else \
                _NotRegular()
        with os.fdopen(os.dup(fd), "rb") as fh:      # Pillow closes the file of the image it opened
            imagehead.open_checked(fh, st.st_size, max_pixels).close()
        chunks, offset = [], 0
        while offset < st.st_size:
            chunk = os.pread(fd, min(1 << 20, st.st_size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


class _NotRegular(OSError):
    pass


def load_file(index: int, path: str, config: ScreenConfig, done: frozenset | set = frozenset()) -> FileItem:
    """Read, hash, decode and tile one file; every failure becomes an error item, never an exception."""
    item = FileItem(index, path)
    # The record's (bytes, mtime_ns) come from this one stat, so the resume key of a file that
    # fails later (unreadable, undecodable) is the same in the record and in the next run.
    try:
        st = os.stat(path)
        item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        pass
    if config.resume_by == "stat" and done and stat_key(path, item.size, item.mtime_ns) in done:
        item.skipped = True
        return item
    try:
        content, _ = read_file(path, config.max_pixels)
    except DecodeError as err:
        item.error, item.reason = err.code, display_path(str(err))
        return _maybe_skip(item, config, done)
    except MemoryError:
        item.error, item.reason = "out_of_memory", "not enough memory to read this file"
        return _maybe_skip(item, config, done)
    except _NotRegular:
        item.error, item.reason = "not_a_regular_file", "not a regular file (device, FIFO or socket)"
        return _maybe_skip(item, config, done)
    except OSError as err:
        item.error, item.reason = _os_error(path, err)
        return _maybe_skip(item, config, done)
    item.sha256 = hashlib.sha256(content).hexdigest()
    if config.resume_by == "sha256" and ("sha256", item.sha256) in done:
        item.skipped = True
        return item
    try:
        img, notes = decode(path, config.max_pixels, content=content)
        del content
        item.height, item.width = int(img.shape[0]), int(img.shape[1])
        item.notes = notes
        item.patches = to_patches(img, config.size, tile=True)
        item.grid = (item.height // config.size, item.width // config.size)
    except DecodeError as err:
        message = display_path(str(err))
        item.error, item.reason = getattr(err, "code", None) or _decode_code(message), message
        item.patches = None
    except MemoryError:
        item.error, item.reason, item.patches = "out_of_memory", "not enough memory to decode this image", None
    return item


def _maybe_skip(item: FileItem, config: ScreenConfig, done) -> FileItem:
    if done and config.resume_by == "sha256" and stat_key(item.path, None, None) in done:
        item.skipped = True
    return item


class FileStream(torch.utils.data.IterableDataset):
    """The rank's share of the sorted file stream, loaded item by item (in DataLoader workers or not).

    With W workers, worker w takes every W-th item of the rank's share and yields one item (a
    skip marker too) per file, so the DataLoader's round-robin gives the items back in order.
    """

    def __init__(self, root, config: ScreenConfig, done: set, info: dist_helpers.DistInfo,
                 paths: Iterable[str] | None = None):
        self.root, self.config, self.done, self.info, self.paths = root, config, done, info, paths

    def __iter__(self) -> Iterator[FileItem]:
        worker = torch.utils.data.get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        source = self.paths if self.paths is not None else iter_screen_files(self.root)
        for local, (index, path) in enumerate(dist_helpers.shard(source, self.info)):
            if local % nworkers == wid:
                yield load_file(index, path, self.config, self.done)


def _identity(item):
    return item


def iter_items(stream: FileStream, workers: int) -> Iterator[FileItem]:
    if workers == 0:
        yield from stream
        return
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_identity,
                                         prefetch_factor=2, persistent_workers=False)
    yield from loader


# ----------------------------------------------------------------------------- the model part

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
        sums = torch.zeros((len(attacks), len(eps), len(good)), dtype=torch.float64, device=device)
        for start in range(0, x.shape[0], config.probe_chunk):
            xc = x[start:start + config.probe_chunk]
            fc = file_of_tile[start:start + config.probe_chunk]
            _, grads = input_gradients(model, xc, decision[fc], attacks)
            for a, name in enumerate(attacks):
                adv = ops.perturb(xc, grads[name], eps, [ATTACK_SIGN[name]] * len(eps), True)   # [E, n, 3, S, S]
                padv = _probabilities(model, adv.reshape(-1, *xc.shape[1:]), config.probe_chunk * 4)
                sums[a].index_add_(1, fc, padv.reshape(len(eps), -1))
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


def _number(value: float, digits: int) -> float:
    return float(round(value, digits))


# ----------------------------------------------------------------------------- output files

def summary_path(out: Path) -> Path:
    return out.with_suffix(".summary.json") if out.suffix else out.with_name(out.name + ".summary.json")


def tiles_dir(out: Path) -> Path:
    return out.with_name((out.stem if out.suffix else out.name) + ".tiles")


def _refuse_links(*paths: Path) -> None:
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


# ----------------------------------------------------------------------------- the job

def _record(item: FileItem, result: dict | None, config: ScreenConfig, out: Path) -> dict:
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


def prepare_outputs(out: Path, resume: bool, force: bool, info: dist_helpers.DistInfo) -> Path:
    """Checks and clears (with --force) the outputs; returns the file this rank appends to."""
    out = Path(out)
    if resume and force:
        raise OutputError("--resume and --force exclude each other (resume keeps the output, force replaces it)")
    if out.suffix.lower() in SCREEN_EXTENSIONS:
        raise OutputError(f"--out {out}: give a .jsonl file, not an image name")
    if out.exists() and out.is_dir():
        raise OutputError(f"--out {out}: is a folder; give a file name such as results.jsonl")
    _refuse_links(out, summary_path(out), tiles_dir(out))
    own = dist_helpers.part_path(out, info.rank, info.world) if info.enabled else out
    _refuse_links(own)
    if not out.parent.is_dir():
        raise OutputError(f"--out {out}: folder {out.parent} does not exist")
    if not resume and out.exists() and not force:
        raise OutputError(f"--out {out}: exists (use --resume to continue it, or --force to overwrite)")
    if force and info.is_main:
        for p in (out, summary_path(out)):
            atomic.remove(p)
        folder = tiles_dir(out)
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name.endswith(".json") and child.is_file() and not child.is_symlink():
                    atomic.remove(child, root=out.parent)
    if (force or not resume) and info.enabled:
        atomic.remove(own)
    return own


@dataclass
class ScreenResult:
    summary: dict
    out: Path
    summary_file: Path


def screen_folder(
    model: nn.Module,
    root,
    out,
    config: ScreenConfig | None = None,
    resume: bool = False,
    force: bool = False,
    csv_out=None,
    paths: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> ScreenResult:
    """Screen every image under ``root`` into ``out`` (JSON Lines) and ``out``'s summary.

    Under torchrun (process group initialized) each rank screens its shard into a part file and
    rank 0 merges the parts atomically into ``out``; every rank returns the same summary.
    """
    config = config or ScreenConfig()
    config.validate()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    info = dist_helpers.current()
    out = Path(out)
    if paths is None and not os.path.exists(root):
        raise DataError(f"{root}: no such file or folder")
    device = next(model.parameters()).device
    model.eval()
    if out.suffix.lower() in SCREEN_EXTENSIONS:          # before the lock file is named after it
        raise OutputError(f"--out {out}: give a .jsonl file, not an image name")
    with lock_outputs(out):
        return _screen_locked(model, root, out, config, resume, force, csv_out, paths, progress, log, info, device)


def _screen_locked(model, root, out: Path, config: ScreenConfig, resume, force, csv_out, paths, progress, log,
                   info, device) -> ScreenResult:
    own = prepare_outputs(out, resume, force, info)
    dist_helpers.barrier()
    done, previous, cut = (set(), 0, 0)
    if resume:
        if info.enabled and out.exists() and not own.exists():
            # A distributed job that finished: its merged output is complete.
            done, previous, cut = repair_and_index(out, config.resume_by)
            own = None
        else:
            done, previous, cut = repair_and_index(own, config.resume_by)
        if cut:
            log(f"recapfast: resume: cut a torn last line ({cut} bytes) from {own or out}")
        log(f"recapfast: resume: {previous} records already in {(own or out).name}")
    processed = skipped = tiles = 0
    start = time.perf_counter()
    if own is not None:
        writer = RecordWriter(own)
        stream = FileStream(root, config, done, info, paths)
        last_index = -1
        pending: list[FileItem] = []
        pending_tiles = 0

        def flush() -> None:
            nonlocal processed, tiles, pending_tiles
            if not pending:
                return
            results = iter(screen_batch(model, pending, config, device))
            records = []
            for item in pending:
                result = next(results) if item.patches is not None else None
                records.append(_record(item, result, config, out))
                if item.patches is not None:
                    tiles += int(item.patches.shape[0])
            writer.write_batch(records)
            processed += len(records)
            if progress is not None:
                progress(len(records))
            pending.clear()
            pending_tiles = 0

        try:
            for item in iter_items(stream, config.workers):
                if item.index <= last_index:
                    raise RuntimeError(f"screening stream out of order at {item.index} after {last_index}")
                last_index = item.index
                if item.skipped:
                    skipped += 1
                    if progress is not None:
                        progress(1)
                    continue
                pending.append(item)
                pending_tiles += 0 if item.patches is None else int(item.patches.shape[0])
                if len(pending) >= config.batch_size or pending_tiles >= config.max_batch_tiles:
                    flush()
            flush()
        finally:
            writer.close()
    seconds = time.perf_counter() - start
    counts = torch.tensor([processed, skipped, tiles], dtype=torch.long)
    dist_helpers.all_reduce_sum_([counts])
    processed, skipped, tiles = (int(v) for v in counts.tolist())
    seconds = dist_helpers.all_reduce_max(seconds)
    dist_helpers.barrier()
    summary = None
    if info.is_main:
        if info.enabled and own is not None:
            parts = [dist_helpers.part_path(out, r, info.world) for r in range(info.world)]
            dist_helpers.merge_parts(parts, out)
            for p in parts:
                p.unlink(missing_ok=True)
        summary = summarize(out, processed, skipped, seconds, tiles, config, info.world)
        atomic.write_json(summary_path(out), summary)
        if csv_out is not None:
            write_csv(out, Path(csv_out))
    summary = dist_helpers.broadcast_object(summary)
    return ScreenResult(summary, out, summary_path(out))

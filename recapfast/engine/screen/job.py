"""The screening job: output checks, the output lock, the streaming loop, distributed shards, the summary.

``screen_folder`` streams the sorted files (recapfast.engine.screen.files) in batches through
the model (recapfast.engine.screen.probe) and appends one record per file (records).  The
output is locked for the whole run (recapfast.io.lock): a second writer, fresh or resuming, is
refused.  Under torchrun each rank screens its shard of the stream into a part file and rank 0
merges the parts atomically into ``out``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from recapfast.data.folder import DataError
from recapfast import distributed as dist_helpers
from recapfast.engine.screen.config import ScreenConfig
from recapfast.engine.screen.files import SCREEN_EXTENSIONS, FileItem, FileStream, iter_items
from recapfast.engine.screen.probe import screen_batch
from recapfast.engine.screen.records import (RecordWriter, check_resume_settings, make_record, model_fingerprint,
                                             refuse_links, repair_and_index, run_settings, summarize, summary_path,
                                             tiles_dir, write_csv)
from recapfast.io import atomic
from recapfast.io.atomic import OutputError
from recapfast.io.lock import lock_outputs


def prepare_outputs(out: Path, resume: bool, force: bool, info: dist_helpers.DistInfo) -> Path:
    """Checks and clears (with --force) the outputs; returns the file this rank appends to."""
    out = Path(out)
    if resume and force:
        raise OutputError("--resume and --force exclude each other (resume keeps the output, force replaces it)")
    if out.suffix.lower() in SCREEN_EXTENSIONS:
        raise OutputError(f"--out {out}: give a .jsonl file, not an image name")
    if out.exists() and out.is_dir():
        raise OutputError(f"--out {out}: is a folder; give a file name such as results.jsonl")
    refuse_links(out, summary_path(out), tiles_dir(out))
    own = dist_helpers.part_path(out, info.rank, info.world) if info.enabled else out
    refuse_links(own)
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
    settings = run_settings(config, model_fingerprint(model))
    if resume:
        # the settings are in the first record of the output (under torchrun: of rank 0's part, which merges first)
        resumed = out if info.enabled and out.exists() and not own.exists() else \
            dist_helpers.part_path(out, 0, info.world) if info.enabled else own
        if not check_resume_settings(resumed, settings):
            log(f"recapfast: resume: {resumed.name} records no settings (an older recapfast wrote it); not checked")
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
        # the first record carries the settings (under torchrun rank 0's: the merged output's first line)
        first = [info.rank == 0 and (not own.exists() or own.stat().st_size == 0)]
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
                records.append(make_record(item, result, config, out))
                if item.patches is not None:
                    tiles += int(item.patches.shape[0])
            if first[0] and records:
                records[0]["settings"] = settings
                first[0] = False
            writer.write_batch(records)
            for rec in records:                  # named on stderr as they are written, as eval names skipped files
                if rec.get("error") is not None:
                    log(f"skipped {rec['path']}: {rec['error']}: {rec.get('reason') or ''}".rstrip(": "))
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

"""Bulk forensic screening: stream a folder, one JSON record per image, resumable and crash-safe.

    config   ScreenConfig: the settings and their checks
    files    discovery (sorted, streamed), header-first reads, decode and tiling; one item per file
    probe    tile probabilities, image verdicts and the smallest flipping eps (shared-gradient sweep)
    records  the record schema, the JSON Lines writer, resume index and repair, summary and CSV
    job      screen_folder: output checks, lock, the streaming loop, distributed shards

This package re-exports the names callers import from ``recapfast.engine.screen``.
"""
from recapfast.engine.screen.config import ScreenConfig
from recapfast.engine.screen.files import iter_screen_files, load_file
from recapfast.engine.screen.job import screen_folder
from recapfast.engine.screen.records import summary_path
from recapfast.io.atomic import OutputError

__all__ = ["OutputError", "ScreenConfig", "iter_screen_files", "load_file", "screen_folder", "summary_path"]

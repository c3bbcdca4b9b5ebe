"""Bounded memory: screening holds nothing per file it has finished, however many files a folder has.

Measured as a slope, not a peak: the Python heap (tracemalloc: every Python object, numpy's buffers, and the
Python object of every tensor) is sampled after each batch of a 4000-file run; after a warm-up quarter the
least-squares growth per file must stay under ``SLOPE_BOUND`` bytes.  Keeping each record, tile map, path or
tensor of a finished file costs ~100 bytes per file or (much) more.  Measured on the 2-core CI machine:
3-8 bytes per file (allocator and interpreter noise); the same run keeping one
path string per file (the test's own leaking variant, which proves the measurement sees such a leak) 95.
Peak RSS was measured here before; it carries tens of MB of allocator and thread-pool noise (its slope per
file wandered between -200 and +600 bytes), so it could not tell a leak from noise.
"""
from __future__ import annotations

import io
import tracemalloc

import numpy as np
from PIL import Image

from recapfast.engine.screen import ScreenConfig, screen_folder

FILES = 4000
BATCH = 32
SLOPE_BOUND = 32          # bytes per file
LEAK_MIN = 64             # the leaking variant must measure at least this (one ~90-byte path string per file)


def heap_growth_per_file(model, root, out, leak: bool = False) -> float:
    """Screen ``root``; the least-squares slope (bytes per file) of the traced Python heap after each batch,
    the first quarter of the batches left out as warm-up. ``leak`` keeps one path string per finished file."""
    samples = np.zeros((FILES // BATCH + 2, 2))    # allocated before tracing starts: the sampling allocates nothing
    count, done, kept = 0, 0, []

    def progress(n: int) -> None:
        nonlocal count, done
        if leak:
            kept.extend(f"{root}/f{done + i:06d}.png" for i in range(n))
        done += n
        samples[count] = (done, tracemalloc.get_traced_memory()[0])
        count += 1

    tracemalloc.start()
    try:
        screen_folder(model, root, out, ScreenConfig(size=32, probe_eps=(), batch_size=BATCH), progress=progress,
                      log=lambda msg: None)
    finally:
        tracemalloc.stop()
    assert done == FILES and count >= 16, (done, count)
    steady = samples[count // 4:count]
    return float(np.polyfit(steady[:, 0], steady[:, 1], 1)[0])


def test_screening_heap_does_not_grow_per_file(tiny, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    root = tmp_path / "in"
    root.mkdir()
    for i in range(FILES):   # one small PNG's bytes under many names (one flat folder: the worst case)
        (root / f"f{i:06d}.png").write_bytes(buf.getvalue())
    leaky = heap_growth_per_file(tiny, root, tmp_path / "leaky.jsonl", leak=True)
    clean = heap_growth_per_file(tiny, root, tmp_path / "clean.jsonl")
    assert (tmp_path / "clean.jsonl").read_bytes().count(b"\n") == FILES
    assert leaky >= LEAK_MIN, f"the measurement missed a leak of one path per file ({leaky:.1f} bytes/file)"
    assert clean < SLOPE_BOUND, f"screening keeps {clean:.1f} bytes per finished file (leak: {leaky:.1f})"

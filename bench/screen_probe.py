"""Screen workload: CPU cost of ``recapfast screen`` with FGSM + LLCM probing at eps 1..5 vs without.

Both runs screen the same folder of 256x256 PNGs (16 tiles of 64 px each) into fresh output files
through ``screen_folder`` (decode, tiling, records, summary); contenders alternate. Target: the
probing run costs <= 6x the plain one.
"""
from __future__ import annotations

import itertools
import json
import tempfile
from collections import Counter
from pathlib import Path

from .common import alternate, contender_settings, log, summary, synth_folder

TARGET = 6.0


def run(model, reps: int, count: int = 16, size: int = 256, tile: int = 64, threads: int = 1) -> dict:
    from recapfast.engine.screen import ScreenConfig, screen_folder

    root = synth_folder(size, count // 2, seed=31)
    tmp = Path(tempfile.mkdtemp(prefix="recapfast-bench-screen-"))
    counter = itertools.count()

    def screen(probe: bool):
        def go():
            with contender_settings("auto", threads):
                config = ScreenConfig(size=tile, probe_eps=(1.0, 2.0, 3.0, 4.0, 5.0) if probe else ())
                return screen_folder(model, root, tmp / f"run{next(counter)}.jsonl", config, log=lambda m: None)
        return go

    log(f"bench screen-probe: {count} images of {size} px, {tile} px tiles, 2 modes x {reps} reps")
    times = alternate({"no-probe": screen(False), "probe-eps-1..5": screen(True)}, reps)
    images = len(list(root.rglob("*.png")))
    rows = {name: summary(t, images) for name, t in times.items()}
    ratio = rows["probe-eps-1..5"]["cpu_s"] / rows["no-probe"]["cpu_s"]
    for name, r in rows.items():
        log(f"  {name:16s} cpu {r['cpu_s']:.3f} s  wall {r['wall_s']:.3f} s")
    log(f"  probe / no-probe: {ratio:.2f}x (CPU)")
    # A file stops being attacked at its first flipping eps, so the cost depends on where the files flip.
    probed = max((p for p in tmp.glob("run*.jsonl")), key=lambda p: int(p.stem[3:]))
    flips = Counter(str(json.loads(line)["flip_eps"]) for line in probed.read_text().splitlines() if line)
    log(f"  flip eps of the probed files: {dict(sorted(flips.items()))}")
    return {"images": images, "size": size, "tile": tile, "threads": threads, "reps": reps, "rows": rows,
            "probe_over_plain": round(ratio, 2), "target": TARGET, "flip_eps_histogram": dict(sorted(flips.items()))}

"""Bounded memory: peak RSS of a 20k-file screening run stays within a fixed bound of a 2k-file run."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from screen_helpers import env, save_tiny_model

# Measured on the 2-core CI machine: 2k files ~305 MB, 20k files ~312 MB (torch itself is most of it;
# the growth is the one sorted folder listing of 20k names plus allocator noise, which reached 18 MB once
# on a heavily loaded machine).  Keeping every record in memory would add > 30 MB at 20k files; the
# bound sits between the two.
GROWTH_BOUND_MB = 24

# Runs `python -m recapfast screen ...` as a child of a fresh interpreter and prints the peak RSS of
# that child process tree (RUSAGE_CHILDREN: the largest descendant waited for), so nothing else the
# test session started counts.
MEASURE = r"""
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(json.dumps({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def peak_rss_mb(root, out, model) -> float:
    cmd = [sys.executable, "-m", "recapfast", "screen", str(root), "--out", str(out), "--model", str(model),
           "--size", "32", "--probe-eps", "none", "--batch-size", "256", "--device", "cpu", "--quiet"]
    res = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["rc"] == 0
    return info["maxrss_kb"] / 1024


def test_peak_rss_does_not_grow_with_the_number_of_files(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    small, large = tmp_path / "k2", tmp_path / "k20"
    small.mkdir()
    large.mkdir()
    for i in range(20_000):   # one small PNG's bytes under 20k names (one flat folder: the worst case)
        (large / f"f{i:06d}.png").write_bytes(data)
        if i < 2_000:
            (small / f"f{i:06d}.png").write_bytes(data)
    model = save_tiny_model(tmp_path / "m.safetensors")
    rss_small = peak_rss_mb(small, tmp_path / "k2.jsonl", model)
    rss_large = peak_rss_mb(large, tmp_path / "k20.jsonl", model)
    assert (tmp_path / "k20.jsonl").read_bytes().count(b"\n") == 20_000
    assert rss_large - rss_small < GROWTH_BOUND_MB, (rss_small, rss_large)

"""Helpers shared by the screening tests (test_screen, test_hostile, test_resume, test_distributed)."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import recapfast as rf
from conftest import TINY_WIDTHS, make_model

REPO = Path(__file__).resolve().parents[1]


def save_tiny_model(path: Path, seed: int = 0, widths=TINY_WIDTHS) -> Path:
    return rf.save_checkpoint(make_model(seed, widths=widths), path)


def png_bytes(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()


def write_images(root: Path, count: int, shape=(96, 128, 3), seed: int = 0, fmt: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        path = root / f"img{i:05d}.{fmt}"
        path.write_bytes(png_bytes(arr) if fmt == "png" else jpeg_bytes(arr))
        paths.append(path)
    return paths


def write_labelled(root: Path, per_class: int, shape=(40, 40, 3), seed: int = 0, name: str = "{:06d}.png") -> Path:
    """A labelled folder: ``per_class`` random PNGs in original/ and recaptured/ (``shape`` may be shape(i))."""
    rng = np.random.default_rng(seed)
    for label in ("original", "recaptured"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            size = shape(i) if callable(shape) else shape
            (root / label / name.format(i)).write_bytes(png_bytes(rng.integers(0, 256, size, dtype=np.uint8)))
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims width x height grey pixels (Pillow refuses it at open)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def read_jsonl(path: Path) -> list[dict]:
    raw = Path(path).read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def env(**extra) -> dict:
    e = dict(os.environ)
    e.update({"RECAPFAST_BACKEND": "torch", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "PYTHONPATH": str(REPO) + os.pathsep + e.get("PYTHONPATH", "")})
    e.update(extra)
    return e


def cli(*args, cwd=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recapfast", *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def comparable(records: list[dict]) -> list[dict]:
    """Records without the fields that legitimately differ between runs of the same files (none today)."""
    return [dict(r) for r in records]

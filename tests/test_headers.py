"""Header-first decoding: limits are checked before the body is read; truncation is an error; 16-bit by header.

Issue 12: a 3 GiB sparse file named .png cost 6.5 GB RSS and 140 s before `undecodable`; a 3 KB
JPEG whose header claims 7000x7000 was screened as valid (11,881 tiles); a dark 16-bit image came
out ~257x brighter (16-bit detected from the pixel values).
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from recapfast.data.folder import DecodeError, decode
from recapfast.engine.screen import ScreenConfig, load_file

from screen_helpers import REPO, env, jpeg_bytes, png_bytes, read_jsonl, save_tiny_model

GIB3 = 3 << 30


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def png_head(width: int, height: int) -> bytes:
    """A complete small PNG stream (IHDR, one IDAT, IEND) declaring width x height."""
    return png_header(width, height) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def sparse(path, size: int, head: bytes = b"") -> None:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)                       # a hole: costs no disk space


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF header is rewritten to claim width x height (about 3 KB)."""
    data = bytearray(jpeg_bytes(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rchar() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar")).split()[1])


@pytest.mark.parametrize("size,head,code", [
    (GIB3, b"", "file_too_large"),                            # 3 GiB: more than any image within --max-pixels
    (GIB3, png_head(100, 100), "file_too_large"),
    (600 << 20, b"", "undecodable"),                          # under the cap: the header (zeros) is refused
    (600 << 20, png_head(100, 100), "file_too_large"),        # a 100x100 image cannot need 600 MB
    (600 << 20, png_head(8000, 8000), "too_many_pixels"),     # 64 Mpx > --max-pixels 50 Mpx
])
def test_huge_sparse_file_is_refused_without_reading_it(tmp_path, size, head, code):
    path = tmp_path / "huge.png"
    sparse(path, size, head)
    before = rchar()
    item = load_file(0, str(path), ScreenConfig(size=32, probe_eps=()))
    assert rchar() - before < (1 << 20)                 # not even 1 MiB of it was read
    assert item.error == code, item.reason
    assert item.patches is None and item.size == size
    with pytest.raises(DecodeError) as err:             # the eval/train loader path too
        decode(path, max_pixels=50_000_000)
    assert err.value.code == code


def test_sparse_file_through_the_cli_costs_little_memory(tmp_path):
    """The CLI screening a folder holding a 3 GiB sparse .png: peak RSS within 200 MB of a run without it."""
    model = save_tiny_model(tmp_path / "m.safetensors")
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.png").write_bytes(png_bytes(np.zeros((64, 64, 3), dtype=np.uint8)))
    big = tmp_path / "big"
    big.mkdir()
    (big / "a.png").write_bytes(png_bytes(np.zeros((64, 64, 3), dtype=np.uint8)))
    sparse(big / "huge.png", GIB3)
    peaks = {}
    for name in ("small", "big"):
        proc = subprocess.Popen([sys.executable, "-m", "recapfast", "screen", str(tmp_path / name), "--out",
                                 str(tmp_path / f"{name}.jsonl"), "--model", str(model), "--size", "32",
                                 "--probe-eps", "none", "--device", "cpu", "--quiet"], env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()[-2000:]
        peaks[name] = usage.ru_maxrss * 1024
    assert peaks["big"] - peaks["small"] < 200 << 20, peaks
    huge = [r for r in read_jsonl(tmp_path / "big.jsonl") if r["path"].endswith("huge.png")][0]
    assert huge["error"] == "file_too_large" and huge["bytes"] == GIB3


def test_small_jpeg_claiming_7000x7000_is_truncated_not_screened(tmp_path):
    data = jpeg_claiming(7000, 7000)
    assert 2500 < len(data) < 3500                     # about 3 KB
    path = tmp_path / "claims.jpg"
    path.write_bytes(data)
    item = load_file(0, str(path), ScreenConfig(size=64, probe_eps=()))
    assert item.error == "truncated" and item.patches is None
    assert "7000x7000" in item.reason and "cannot hold" in item.reason
    # The same header with data to cover it (one bit per 8x8 block: 7000^2/64/8 * 3 components) passes
    # the size check: the limit is a lower bound, not a guess.
    need = (875 * 875 * 3) // 8
    assert len(data) < need


def test_png_claiming_more_than_its_data_can_hold_is_truncated(tmp_path):
    # 6000x6000 RGB needs >= 6000 * 18001 / 1032 bytes of deflate data (deflate's best ratio is 1032:1).
    path = tmp_path / "claims.png"
    path.write_bytes(png_header(6000, 6000) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""))
    with pytest.raises(DecodeError, match="truncated") as err:
        decode(path, max_pixels=50_000_000)
    assert err.value.code == "truncated"
    # A genuinely uniform 1200x1200 PNG is tiny (about 5 KB) and is NOT refused: the bound is deflate's limit.
    flat = tmp_path / "flat.png"
    flat.write_bytes(png_bytes(np.full((1200, 1200, 3), 7, dtype=np.uint8)))
    assert flat.stat().st_size < 20_000
    arr, _ = decode(flat)
    assert arr.shape == (1200, 1200, 3) and int(arr.max()) == 7


def test_truncated_bmp_and_uncompressed_needs_all_rows(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(buf, format="BMP")
    data = buf.getvalue()
    (tmp_path / "cut.bmp").write_bytes(data[: len(data) - 500])
    with pytest.raises(DecodeError, match="truncated") as err:
        decode(tmp_path / "cut.bmp")
    assert err.value.code == "truncated"
    (tmp_path / "ok.bmp").write_bytes(data)
    assert decode(tmp_path / "ok.bmp")[0].shape == (80, 90, 3)


def test_16bit_is_detected_by_header_not_by_values(tmp_path):
    dark = np.full((40, 40), 200, dtype=np.uint16)            # max 200 of 65535: nearly black
    dark[0, 0] = 25700                                        # 25700 / 65535 * 255 = 100.0
    Image.fromarray(dark).save(tmp_path / "dark.png")
    arr, notes = decode(tmp_path / "dark.png")
    assert "16-bit scaled to 8-bit" in notes
    assert int(arr[0, 0, 0]) == 100 and int(arr[1, 1, 0]) == 1        # round(200 * 255 / 65535) = 1, not 200
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    arr, notes = decode(tmp_path / "dark.tif")
    assert int(arr[0, 0, 0]) == 100 and int(arr[1, 1, 0]) == 1 and "16-bit scaled to 8-bit" in notes
    bright8 = np.full((40, 40), 200, dtype=np.uint8)          # an 8-bit grey image keeps its values
    Image.fromarray(bright8).save(tmp_path / "grey8.png")
    assert int(decode(tmp_path / "grey8.png")[0][1, 1, 0]) == 200


def test_other_formats_named_png_are_not_decoded(tmp_path):
    """Only PNG/JPEG/BMP/TIFF/WebP/GIF decoders ever see the bytes (no EPS, PSD, ICO ... by content)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(buf, format="ICO")
    (tmp_path / "icon.png").write_bytes(buf.getvalue())
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode(tmp_path / "icon.png")


def test_hostile_records_in_the_readme_list(tmp_path):
    """Every error code screening can emit is listed in docs/screening.md's record schema section."""
    readme = (REPO / "docs" / "screening.md").read_text()
    for code in ("undecodable", "truncated", "file_too_large", "empty_file", "decompression_bomb",
                 "too_many_pixels", "too_small", "permission_denied", "broken_symlink", "symlink_loop", "vanished",
                 "not_a_regular_file", "read_error", "out_of_memory"):
        assert f"`{code}`" in readme, code
    json.dumps({})

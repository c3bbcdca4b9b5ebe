"""Property-based fuzzing (hypothesis, derandomized: the same examples in every CI run).

Decoder: PNG/JPEG/TIFF/BMP files with mutated headers (dimensions, bit depths, colour types,
component tables, TIFF tags; PNG CRCs recomputed so the mutation reaches the decoder) and
random byte flips/truncations must give a uint8 RGB image within the pixel limit or one
DecodeError with a known code; never another exception, never a huge allocation.

CLI: random strings for the numeric options of every command must give exit code 0, or 1 with
exactly one `recapfast: error` line, never a traceback (exit 2).
"""
from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from recapfast.cli import app
from recapfast.data.folder import DecodeError, decode
from recapfast.engine.screen import ScreenConfig, load_file

from screen_helpers import png_bytes, save_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")     # Pillow warns about the odd TIFF tags
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI_FUZZ = settings(FUZZ, max_examples=30)
MAX_PIXELS = 1 << 20
CODES = {"undecodable", "truncated", "file_too_large", "empty_file", "decompression_bomb", "too_many_pixels",
         "too_small", "not_a_regular_file", "out_of_memory"}
RNG = np.random.default_rng(99)


def _encode(fmt: str, array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if kw.pop("palette", False):
        image = image.convert("P", palette=Image.ADAPTIVE, colors=8)
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


SEEDS = {
    "png_rgb": _encode("PNG", RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)),
    "png_16": _encode("PNG", RNG.integers(0, 65536, (20, 30), dtype=np.uint16)),
    "png_palette": _encode("PNG", RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8), palette=True),
    "jpeg": _encode("JPEG", RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8), quality=80),
    "jpeg_progressive": _encode("JPEG", RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8), progressive=True),
    "tiff": _encode("TIFF", RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)),
    "tiff_deflate": _encode("TIFF", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), compression="tiff_adobe_deflate"),
    "bmp": _encode("BMP", RNG.integers(0, 256, (10, 14, 3), dtype=np.uint8)),
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@st.composite
def png_ihdr(draw):
    """A real PNG whose IHDR fields are replaced (CRC recomputed): the decoder sees the lie."""
    seed = SEEDS[draw(st.sampled_from(["png_rgb", "png_16", "png_palette"]))]
    dims = st.one_of(st.integers(0, 70), st.integers(0, 2 ** 31 - 1), st.sampled_from([1, 7000, 65535, 2 ** 31]))
    ihdr = struct.pack(">IIBBBBB", draw(dims), draw(dims), draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 255])),
                       draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7, 255])), draw(st.sampled_from([0, 1])), 0,
                       draw(st.sampled_from([0, 1, 2])))
    return seed[:8] + _chunk(b"IHDR", ihdr) + seed[33:]


@st.composite
def jpeg_sof(draw):
    """A real JPEG whose SOF dimensions / sampling factors / component count are replaced."""
    seed = bytearray(SEEDS[draw(st.sampled_from(["jpeg", "jpeg_progressive"]))])
    sof = max(seed.find(b"\xff\xc0"), seed.find(b"\xff\xc2"))
    u16 = st.one_of(st.integers(0, 80), st.integers(0, 65535))
    seed[sof + 5:sof + 9] = struct.pack(">HH", draw(u16), draw(u16))
    if draw(st.booleans()):
        seed[sof + 11] = draw(st.integers(0, 255))              # first component's sampling factors
    if draw(st.booleans()):
        seed[sof + 9] = draw(st.integers(0, 255))               # component count
    return bytes(seed)


@st.composite
def tiff_tags(draw):
    """A real TIFF with one IFD entry's value replaced (width, length, bits, compression, strips, ...)."""
    seed = bytearray(SEEDS[draw(st.sampled_from(["tiff", "tiff_deflate"]))])
    (ifd,) = struct.unpack("<I", seed[4:8])
    (count,) = struct.unpack("<H", seed[ifd:ifd + 2])
    entry = ifd + 2 + 12 * draw(st.integers(0, count - 1))
    seed[entry + 8:entry + 12] = struct.pack("<I", draw(st.one_of(st.integers(0, 100), st.integers(0, 2 ** 32 - 1))))
    if draw(st.booleans()):
        seed[entry + 2:entry + 4] = struct.pack("<H", draw(st.integers(0, 20)))     # the field type
    return bytes(seed)


@st.composite
def byte_flips(draw):
    seed = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        seed[draw(st.integers(0, min(len(seed), 300) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(seed))))
    return bytes(seed[:cut] if cut is not None else seed)


def check_decode(data: bytes, tmp: Path) -> None:
    try:
        arr, notes = decode("fuzz.bin", max_pixels=MAX_PIXELS, content=data)
    except DecodeError as err:
        assert err.code in CODES and str(err) and "\n" not in str(err), (err.code, str(err))
    else:
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        assert arr.shape[0] * arr.shape[1] <= MAX_PIXELS and isinstance(notes, list)
    path = tmp / "f.png"
    path.write_bytes(data)
    item = load_file(0, str(path), ScreenConfig(size=8, probe_eps=(), max_pixels=MAX_PIXELS))
    assert (item.patches is None) == (item.error is not None)
    assert item.error is None or item.error in CODES, (item.error, item.reason)


@pytest.mark.parametrize("strategy", [png_ihdr(), jpeg_sof(), tiff_tags(), byte_flips()],
                         ids=["png_ihdr", "jpeg_sof", "tiff_tags", "byte_flips"])
def test_mutated_headers_decode_or_fail_cleanly(strategy, tmp_path):
    @FUZZ
    @given(strategy)
    def check(data):
        check_decode(data, tmp_path)

    check()


# ----------------------------------------------------------------------------- the command line

NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-0", "0", "0.49", "0.5", "1", "2", "255", "255.5", "1e308", "-1e-300",
                     "none", "", " ", ",", "1,,2", "1,2", "3, 4", "0x10", "1_0", "½", "1e", "NaN,1", "--eps"]),
    st.text(alphabet="0123456789.,-+eE naif", max_size=8))


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzzcli")
    data = base / "data"
    for label in ("original", "recaptured"):
        (data / label).mkdir(parents=True)
        (data / label / "a.png").write_bytes(png_bytes(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    return data, save_tiny_model(base / "m.safetensors")


def invoke(args) -> None:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code in (0, 1), (args, res.exit_code, res.output[-2000:])
    if res.exit_code == 1:
        lines = [x for x in res.output.splitlines() if x.startswith("recapfast: error")]
        assert len(lines) == 1, (args, res.output[-2000:])
    assert "Traceback" not in res.output, (args, res.output[-2000:])


def test_cli_numbers_eval_attack_screen(cli_setup):
    data, model = cli_setup

    @CLI_FUZZ
    @given(st.sampled_from(["eval", "attack", "screen"]), NUMBERS, NUMBERS,
           st.sampled_from(["fgsm", "llcm", "bim", "pgd", "fgsm,bim", "cw", ""]))
    def check(cmd, a, b, attack):
        with tempfile.TemporaryDirectory() as tmp:
            common = ["--model", model, "--size", "16", "--device", "cpu", "-q"]
            if cmd == "eval":
                invoke(["eval", data, "--eps", a, "--step-size", b, "--attack", attack, *common])
            elif cmd == "attack":
                invoke(["attack", data, "--out", Path(tmp) / "adv", "--eps", a, "--attack", attack, *common])
            else:
                invoke(["screen", data, "--out", Path(tmp) / "r.jsonl", "--probe-eps", a, "--threshold", b,
                        *common])

    check()


def test_cli_numbers_train_uap_transfer(cli_setup):
    data, model = cli_setup

    @CLI_FUZZ
    @given(st.sampled_from(["train", "uap", "transfer"]), NUMBERS, NUMBERS)
    def check(cmd, a, b):
        with tempfile.TemporaryDirectory() as tmp:
            if cmd == "train":
                invoke(["train", data, "--out", Path(tmp) / "m.safetensors", "--widths", f"{a},4,4,4,4", "--lr", b,
                        "--iters", 0, "--batch-size", 2, "--size", 16, "--device", "cpu", "-q"])
            elif cmd == "uap":
                invoke(["uap", "--model", model, "--xi", a, "--out", Path(tmp) / "u.png", "--iters", 1, "--size", 16,
                        "--device", "cpu", "-q"])
            else:
                invoke(["transfer", data, "--source", model, "--target", model, "--eps", a, "--xi", b,
                        "--uap-iters", 1, "--size", 16, "--device", "cpu", "-q"])

    check()

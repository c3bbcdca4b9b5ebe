"""Header-first image checks: what a file declares is checked against limits before its body is read.

:func:`open_checked` opens an image lazily with Pillow (only the header is parsed, and only the
formats recapfast reads: PNG, JPEG/MPO, BMP, TIFF, WebP, GIF; no other Pillow plugin ever sees
the bytes) and refuses it, before any pixel is decoded, when

- the file is larger than :func:`file_size_cap` (16 bytes per allowed pixel + 64 MiB) or, for a
  single-frame PNG/JPEG/BMP, larger than 16 bytes per declared pixel + 64 MiB (``file_too_large``:
  a tiny image header in front of gigabytes of anything is never read);
- the declared size is zero, exceeds ``max_pixels`` (``too_many_pixels``) or Pillow's bomb guard
  (``decompression_bomb``);
- the file is too small to hold the declared image (``truncated``): a PNG needs at least
  1/1032 of its raw scanlines (deflate's best ratio), a Huffman-coded JPEG at least one bit per
  8x8 block of every component, an uncompressed BMP all its rows.  (GIF, TIFF and WebP can
  legitimately code huge uniform areas in a few bytes; only the pixel limit applies to them.)

Every refusal is a :class:`DecodeError` with a ``code`` (the screening error code) and a one-line
reason.  :func:`declared_bits` reports the sample depth a header declares (16-bit detection by
mode/header, never by pixel values).
"""
from __future__ import annotations

import math
import struct
import warnings
from typing import BinaryIO

ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF")
BYTES_PER_PIXEL_CAP = 16          # 16-bit RGBA is 8 bytes/pixel; twice that for metadata and container overhead
SLACK = 64 << 20                  # metadata allowance (ICC profiles, EXIF, thumbnails, text chunks)
DEFLATE_MAX_RATIO = 1032
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
JPEG_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}
JPEG_SOF = JPEG_HUFFMAN_SOF | {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class DecodeError(Exception):
    """One file that cannot be used (the run reports it and goes on); ``code`` names the reason."""

    def __init__(self, message: str, code: str = "undecodable"):
        super().__init__(message)
        self.code = code


PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, struct.error,
              ZeroDivisionError, OverflowError)


def describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "cannot identify image file" in text:
        return "not a decodable image (unrecognized or corrupt header)"
    if "truncated" in text.lower():
        return "truncated or corrupt image data"
    return f"{type(err).__name__}: {text}"


def as_decode_error(err: BaseException) -> DecodeError:
    """A Pillow/decoder exception as a DecodeError (``truncated`` or ``undecodable``)."""
    message = describe(err)
    return DecodeError(message, "truncated" if message.startswith("truncated") else "undecodable")


def file_size_cap(max_pixels: int | None) -> int | None:
    return None if max_pixels is None else BYTES_PER_PIXEL_CAP * int(max_pixels) + SLACK


def check_file_size(size: int, max_pixels: int | None) -> None:
    """Refuse empty files and files no image within ``max_pixels`` can need (before reading them)."""
    if size == 0:
        raise DecodeError("empty file (0 bytes)", "empty_file")
    cap = file_size_cap(max_pixels)
    if cap is not None and size > cap:
        raise DecodeError(f"file is {size} bytes, more than any image within the pixel limit of {max_pixels} "
                          f"can need ({cap}); not read", "file_too_large")


def _read_at(fh: BinaryIO, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


def _png_min_bytes(fh: BinaryIO) -> tuple[int, int] | None:
    """(minimum file bytes, bit depth) from the IHDR chunk, or None if it is not where it must be."""
    head = _read_at(fh, 0, 33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    channels = PNG_CHANNELS.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        return None
    raw = height * (1 + (width * channels * depth + 7) // 8)
    return 33 + 12 + raw // DEFLATE_MAX_RATIO, depth


def _jpeg_min_bytes(fh: BinaryIO, max_segments: int = 4096) -> int | None:
    """One bit per 8x8 block of every component (Huffman-coded SOF), or None (arithmetic, not found)."""
    pos = 2
    for _ in range(max_segments):
        head = _read_at(fh, pos, 4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:                 # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):          # start of scan / end of image before any frame header
            return None
        (length,) = struct.unpack(">H", head[2:4])
        if marker in JPEG_SOF:
            if marker not in JPEG_HUFFMAN_SOF:
                return None
            seg = _read_at(fh, pos + 4, max(0, length - 2))
            if len(seg) < 6:
                return None
            height, width, ncomp = struct.unpack(">HHB", seg[1:6])
            comps = [(seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15) for i in range(ncomp) if 8 + 3 * i < len(seg)]
            if not comps or height == 0:
                return None
            hmax, vmax = max(h for h, _ in comps) or 1, max(v for _, v in comps) or 1
            blocks = sum(math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(math.ceil(height * v / vmax) / 8)
                         for h, v in comps)
            return pos + length + blocks // 8
        if length < 2:
            return None
        pos += 2 + length
    return None


def _bmp_min_bytes(fh: BinaryIO) -> int | None:
    head = _read_at(fh, 0, 34)
    if len(head) < 26 or head[:2] != b"BM":
        return None
    offset, dib = struct.unpack("<II", head[10:18])
    if dib == 12:
        width, height, _, bpp = struct.unpack("<HHHH", head[18:26])
        compression = 0
    elif dib >= 40 and len(head) >= 34:
        width, height, _, bpp, compression = struct.unpack("<iiHHI", head[18:34])
    else:
        return None
    if compression not in (0, 3, 6) or bpp not in (1, 2, 4, 8, 16, 24, 32):
        return None                         # RLE may skip regions legitimately
    return offset + ((abs(width) * bpp + 31) // 32) * 4 * abs(height)


def minimum_bytes(fmt: str, fh: BinaryIO) -> int | None:
    try:
        if fmt == "PNG":
            found = _png_min_bytes(fh)
            return None if found is None else found[0]
        if fmt in ("JPEG", "MPO"):
            return _jpeg_min_bytes(fh)
        if fmt == "BMP":
            return _bmp_min_bytes(fh)
    except (OSError, struct.error, IndexError):
        return None
    return None


def declared_bits(im, fh: BinaryIO | None = None) -> int:
    """Bits per sample the header declares (8 unless a 16/32-bit mode or a deeper PNG/TIFF header says so)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "I;32", "I;32S", "I;32B", "I;32L"):
        if im.format == "PNG" and fh is not None:
            found = _png_min_bytes(fh)
            if found is not None:
                return found[1]
        tag = getattr(im, "tag_v2", None)
        if tag is not None and tag.get(258):
            bits = tag.get(258)
            return int(bits[0] if isinstance(bits, tuple) else bits)
        return 16
    return 8


def _formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()                        # registers every plugin; only ALLOWED_FORMATS are ever used
    return tuple(f for f in ALLOWED_FORMATS if f in Image.ID)


def open_checked(fh: BinaryIO, size: int, max_pixels: int | None):
    """The lazily opened Pillow image of ``fh`` (``size`` bytes) after every header check; DecodeError if refused.

    The caller must close the image (``with``).  Nothing but the header has been read.
    """
    from PIL import Image

    cap_pixels = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0) or None
    check_file_size(size, cap_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fh, formats=_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError(f"decompression bomb refused ({err})", "decompression_bomb") from err
    except PIL_ERRORS as err:
        raise as_decode_error(err) from err
    try:
        width, height = im.size
        if width < 1 or height < 1:
            raise DecodeError(f"declares an empty {width}x{height} image", "undecodable")
        if max_pixels is not None and width * height > max_pixels:
            raise DecodeError(f"{width}x{height} exceeds the pixel limit of {max_pixels}", "too_many_pixels")
        fmt = im.format or ""
        single = getattr(im, "n_frames", 1) == 1 if fmt in ("PNG", "BMP") else fmt == "JPEG"
        if single and size > BYTES_PER_PIXEL_CAP * width * height + SLACK:
            raise DecodeError(f"file is {size} bytes, far more than its declared {width}x{height} image can "
                              f"need; not read", "file_too_large")
        need = minimum_bytes(fmt, fh)
        if need is not None and size < need:
            raise DecodeError(f"truncated: {size} bytes cannot hold the declared {width}x{height} {fmt} image "
                              f"(at least {need} needed)", "truncated")
    except BaseException:
        im.close()
        raise
    return im


__all__ = ["ALLOWED_FORMATS", "DecodeError", "check_file_size", "declared_bits", "file_size_cap", "minimum_bytes",
           "open_checked"]

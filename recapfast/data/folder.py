"""Folder discovery, decoding with Pillow, patching/tiling, labels, and the streaming loader.

Conventions (ARCHITECTURE.md):
- Files: png/jpg/jpeg/bmp/tif/tiff/webp, any case, found recursively in sorted path order.
- Labels: DIR/original/** = 0, DIR/recaptured/** = 1 (folder names overridable).
- Decoding: RGB uint8. Grey is replicated to 3 channels; alpha is DROPPED (not composited);
  16-bit images are scaled to 8 bits; palette/CMYK/YCbCr converted; EXIF orientation applied;
  multi-frame files give their first frame.  Each conversion is recorded in the per-file notes.
- Patches: ``--size S`` center crop (one patch per file) or ``--tile`` (every non-overlapping
  SxS patch of the grid anchored at the top-left corner, row-major).  A file smaller than the
  patch, or one that cannot be decoded, is an error record (path + reason), never an abort.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from recapfast.data import header as imagehead
from recapfast.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
CLASS_NAMES = ("original", "recaptured")
UNLABELLED = -1


class DataError(UserError):
    """A folder or argument that cannot be used (the whole run stops with this message)."""


DecodeError = imagehead.DecodeError   # one file that cannot be used (the run reports it and goes on)


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_images(root: str | os.PathLike) -> Iterator[str]:
    """Image paths under ``root`` (recursive) in sorted path order, streamed folder by folder.

    Folders reached through symbolic links are not entered (no loops); unreadable folders are skipped.
    """
    root = os.fspath(root)
    if os.path.isfile(root):
        yield root
        return
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from iter_images(entry.path)
        elif is_image_name(entry.name) and not _links_to_dir(entry):
            yield entry.path        # a symlink loop too: decoding it is that file's error record, never an abort


def _links_to_dir(entry: os.DirEntry) -> bool:
    """Whether ``entry`` (a symlink or file) leads to a folder; False when following it fails (a loop)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def discover(root: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES,
             labelled: bool = True) -> list[Sample]:
    """Samples of a labelled folder (``root/<class_names[i]>/**`` has label i) or an unlabelled one."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if not labelled:
        return [Sample(p, UNLABELLED) for p in iter_images(root)]
    if not root.is_dir():
        raise DataError(f"{root}: a labelled data set is a folder with {'/ and '.join(class_names)}/ inside")
    present = [name for name in class_names if (root / name).is_dir()]
    if not present:
        raise DataError(f"{root}: has no {'/ or '.join(class_names)}/ folder (labels come from those folder names)")
    samples = []
    for label, name in enumerate(class_names):
        if (root / name).is_dir():
            samples.extend(Sample(p, label) for p in iter_images(root / name))
    if not samples:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return samples


def _to_uint8(arr: np.ndarray, bits: int, notes: list[str]) -> np.ndarray:
    """Integer samples of ``bits`` declared bits (from the mode/header, never the values) to uint8."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        peak = float((1 << bits) - 1)
        if bits > 8:
            notes.append(f"{bits}-bit scaled to 8-bit")
        return np.clip(np.rint(arr.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)
    notes.append("float image clipped to [0, 255]")
    return np.clip(np.rint(np.nan_to_num(arr.astype(np.float64))), 0, 255).astype(np.uint8)


def _open_regular(path: str):
    """A binary file object for ``path``; FIFOs, devices and folders are refused, never waited on."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DecodeError("symbolic link loop", "symlink_loop") from err
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DecodeError("not a regular file (device, FIFO, socket or folder)", "not_a_regular_file")
    return os.fdopen(fd, "rb")


def decode(path: str | os.PathLike, max_pixels: int | None = None,
           content: bytes | None = None) -> tuple[np.ndarray, list[str]]:
    """RGB uint8 array [H, W, 3] and the list of conversions applied.  Raises DecodeError.

    The header is checked first (recapfast.data.header: pixel limit, bomb guard, file size against
    the declared image, truncation) and only then are pixels decoded.  ``content``: the file's
    bytes when the caller has read them already (screening hashes and decodes one read, so a file
    cannot change between the two); ``path`` then only names it.
    """
    import io

    from PIL import Image, ImageOps

    notes: list[str] = []
    path = os.fspath(path)
    try:
        with (io.BytesIO(content) if content is not None else _open_regular(path)) as fh:
            size = len(content) if content is not None else os.fstat(fh.fileno()).st_size
            with imagehead.open_checked(fh, size, max_pixels) as im:
                frames = getattr(im, "n_frames", 1)
                if frames > 1:
                    notes.append(f"first of {frames} frames")
                bits = imagehead.declared_bits(im, fh)
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                if orientation not in (None, 1):
                    notes.append(f"EXIF orientation {orientation} applied")
                im = ImageOps.exif_transpose(im)
                mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    notes.append("palette converted")
                    mode = im.mode
                if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
                    notes.append("alpha dropped")
                    im = im.convert("RGB") if mode != "LA" else im.getchannel("L")
                    mode = im.mode
                if mode in ("RGB",):
                    arr = np.array(im, dtype=np.uint8)
                elif mode in ("L", "1"):
                    arr = np.array(im.convert("L"), dtype=np.uint8)
                elif mode.startswith("I") or mode == "F":
                    arr = _to_uint8(np.array(im), bits, notes)
                else:
                    notes.append(f"{mode} converted to RGB")
                    arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise DecodeError(f"decompression bomb refused ({err})", "decompression_bomb") from err
    except Image.DecompressionBombWarning as err:
        raise DecodeError(f"decompression bomb refused ({err})", "decompression_bomb") from err
    except MemoryError as err:
        raise DecodeError("not enough memory to decode this image", "out_of_memory") from err
    except imagehead.PIL_ERRORS as err:
        raise imagehead.as_decode_error(err) from err
    if arr.ndim == 2:
        notes.append("grey replicated to RGB")
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DecodeError(f"unsupported pixel layout {arr.shape}")
    return np.ascontiguousarray(arr), notes


def to_patches(img: np.ndarray, size: int, tile: bool = False) -> torch.Tensor:
    """uint8 [N, 3, size, size] patches of an [H, W, 3] image (center crop, or all tiles)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise DecodeError(f"image {w}x{h} is smaller than the {size}x{size} patch", "too_small")
    chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if not tile:
        top, left = (h - size) // 2, (w - size) // 2
        return chw[:, top:top + size, left:left + size].unsqueeze(0).contiguous()
    rows, cols = h // size, w // size
    grid = chw[:, :rows * size, :cols * size].reshape(3, rows, size, cols, size)
    return grid.permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, size, size).contiguous()


@dataclass
class Item:
    index: int
    label: int
    patches: torch.Tensor | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    grid: tuple[int, int] = (1, 1)       # tile rows x cols (1 x 1 for a center crop)


class PatchDataset(Dataset):
    """Decodes one file per item into its patches; a bad file becomes an Item with ``error``."""

    def __init__(self, samples: Sequence[Sample], size: int, tile: bool = False, max_pixels: int | None = None):
        if size < 1:
            raise DataError(f"--size must be a positive number of pixels, got {size}")
        self.samples = list(samples)
        self.size = size
        self.tile = tile
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        sample = self.samples[index]
        try:
            img, notes = decode(sample.path, self.max_pixels)
            grid = (img.shape[0] // self.size, img.shape[1] // self.size) if self.tile else (1, 1)
            return Item(index, sample.label, to_patches(img, self.size, self.tile), None, notes, grid)
        except DecodeError as err:
            return Item(index, sample.label, None, str(err))


@dataclass
class Batch:
    """Patches of several files: ``x`` uint8 [N, 3, S, S], ``y`` [N], ``file_index`` [N]."""

    x: torch.Tensor
    y: torch.Tensor
    file_index: torch.Tensor
    files: list[int]
    errors: list[tuple[int, str]]
    notes: list[tuple[int, list[str]]]
    grids: dict[int, tuple[int, int]] = field(default_factory=dict)

    def pin_memory(self) -> "Batch":
        self.x = self.x.pin_memory()
        return self


def collate(items: Iterable[Item]) -> Batch:
    xs, ys, idx, files, errors, notes, grids = [], [], [], [], [], [], {}
    size = None
    for item in items:
        if item.error is not None:
            errors.append((item.index, item.error))
            continue
        n = item.patches.shape[0]
        size = item.patches.shape[-1]
        xs.append(item.patches)
        ys.append(torch.full((n,), item.label, dtype=torch.long))
        idx.append(torch.full((n,), item.index, dtype=torch.long))
        files.append(item.index)
        grids[item.index] = item.grid
        if item.notes:
            notes.append((item.index, item.notes))
    if xs:
        x = torch.cat(xs)
        y, file_index = torch.cat(ys), torch.cat(idx)
    else:
        x = torch.empty((0, 3, size or 0, size or 0), dtype=torch.uint8)
        y = file_index = torch.empty((0,), dtype=torch.long)
    return Batch(x, y, file_index, files, errors, notes, grids)


def make_loader(dataset: PatchDataset, batch_size: int = 64, workers: int = 0, pin_memory: bool = False,
                batch_sampler=None) -> DataLoader:
    """Streaming loader: files decoded in ``workers`` processes, at most 2 batches ahead per worker."""
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    kwargs = dict(num_workers=workers, collate_fn=collate, pin_memory=pin_memory)
    if workers > 0:
        kwargs.update(prefetch_factor=2, persistent_workers=False)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)

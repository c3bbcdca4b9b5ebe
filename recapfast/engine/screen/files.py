"""Discovery and loading of the files to screen: the sorted file stream, header-first reads, decode and tiling.

Every failure of one file (unreadable, a special file, undecodable, too large) becomes an error
item, never an exception, so the job writes one record per discovered file.  Files already in
the output (``resume``) come back as skip markers.  Each file's header is checked before its
body is read (recapfast.data.header).
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from recapfast.data import header as imagehead
from recapfast.data.folder import IMAGE_EXTENSIONS, DecodeError, decode, to_patches
from recapfast import distributed as dist_helpers
from recapfast.engine.screen.config import ScreenConfig
from recapfast.engine.screen.records import display_path, stat_key

SCREEN_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}


def iter_screen_files(root: str | os.PathLike) -> Iterator[str]:
    """Candidate image files under ``root`` (recursive), sorted per folder, depth first, streamed.

    Unlike the training loader, broken symlinks, symlink loops and special files with an image
    extension are yielded too: screening reports them as error records instead of hiding them.
    Folders reached through symbolic links are not entered (no loops); unreadable folders are skipped.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        yield root
        return
    try:
        with os.scandir(root) as it:
            # Names only (not DirEntry objects): the one listing held at a time stays small.
            names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError:
        return
    for name, is_dir in names:
        path = os.path.join(root, name)
        if is_dir:
            yield from iter_screen_files(path)
        elif os.path.splitext(name)[1].lower() in SCREEN_EXTENSIONS and not os.path.isdir(path):
            yield path


# ----------------------------------------------------------------------------- per-file loading

@dataclass
class FileItem:
    """One discovered file after reading + decoding (in a worker or in-process)."""

    index: int
    path: str
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    notes: list = field(default_factory=list)
    patches: torch.Tensor | None = None
    grid: tuple = (0, 0)
    error: str | None = None
    reason: str | None = None
    skipped: bool = False             # already in the output (resume)


def _os_error(path: str, err: OSError) -> tuple[str, str]:
    """(error code, reason) for a file that cannot be opened or read."""
    code = err.errno
    if code in (errno.EACCES, errno.EPERM):
        return "permission_denied", "permission denied (cannot read the file)"
    if code == errno.ELOOP:
        return "symlink_loop", "symbolic link loop"
    if code == errno.ENOENT:
        if os.path.islink(path):
            return "broken_symlink", f"broken symbolic link (target {display_path(os.readlink(path))!s} missing)"
        return "vanished", "file vanished between discovery and reading"
    if code == errno.EISDIR:
        return "not_a_regular_file", "a folder, not a file"
    return "read_error", f"{type(err).__name__}: {display_path(err.strerror or str(err))}"


def _decode_code(message: str) -> str:
    """Error code of a DecodeError message (DecodeError.code is used when set)."""
    if message.startswith("empty file"):
        return "empty_file"
    if "decompression bomb" in message:
        return "decompression_bomb"
    if "exceeds the pixel limit" in message:
        return "too_many_pixels"
    if "smaller than" in message:
        return "too_small"
    return "undecodable"


def read_file(path: str, max_pixels: int | None = None) -> tuple[bytes, os.stat_result]:
    """The whole file and its stat, from one open descriptor (refuses FIFOs, devices, folders).

    Header first: the header is checked (recapfast.data.header; DecodeError) before the body is
    read, and at most the size fstat reported is read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file") if stat.S_ISDIR(st.st_mode) else \
                _NotRegular()
        with os.fdopen(os.dup(fd), "rb") as fh:      # Pillow closes the file of the image it opened
            imagehead.open_checked(fh, st.st_size, max_pixels).close()
        chunks, offset = [], 0
        while offset < st.st_size:
            chunk = os.pread(fd, min(1 << 20, st.st_size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


class _NotRegular(OSError):
    pass


def load_file(index: int, path: str, config: ScreenConfig, done: frozenset | set = frozenset()) -> FileItem:
    """Read, hash, decode and tile one file; every failure becomes an error item, never an exception."""
    item = FileItem(index, path)
    # The record's (bytes, mtime_ns) come from this one stat, so the resume key of a file that
    # fails later (unreadable, undecodable) is the same in the record and in the next run.
    try:
        st = os.stat(path)
        item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        pass
    if config.resume_by == "stat" and done and stat_key(path, item.size, item.mtime_ns) in done:
        item.skipped = True
        return item
    try:
        content, _ = read_file(path, config.max_pixels)
    except DecodeError as err:
        item.error, item.reason = err.code, display_path(str(err))
        return _maybe_skip(item, config, done)
    except MemoryError:
        item.error, item.reason = "out_of_memory", "not enough memory to read this file"
        return _maybe_skip(item, config, done)
    except _NotRegular:
        item.error, item.reason = "not_a_regular_file", "not a regular file (device, FIFO or socket)"
        return _maybe_skip(item, config, done)
    except OSError as err:
        item.error, item.reason = _os_error(path, err)
        return _maybe_skip(item, config, done)
    item.sha256 = hashlib.sha256(content).hexdigest()
    if config.resume_by == "sha256" and ("sha256", item.sha256) in done:
        item.skipped = True
        return item
    try:
        img, notes = decode(path, config.max_pixels, content=content)
        del content
        item.height, item.width = int(img.shape[0]), int(img.shape[1])
        item.notes = notes
        item.patches = to_patches(img, config.size, tile=True)
        item.grid = (item.height // config.size, item.width // config.size)
    except DecodeError as err:
        message = display_path(str(err))
        item.error, item.reason = getattr(err, "code", None) or _decode_code(message), message
        item.patches = None
    except MemoryError:
        item.error, item.reason, item.patches = "out_of_memory", "not enough memory to decode this image", None
    return item


def _maybe_skip(item: FileItem, config: ScreenConfig, done) -> FileItem:
    if done and config.resume_by == "sha256" and stat_key(item.path, None, None) in done:
        item.skipped = True
    return item


class FileStream(torch.utils.data.IterableDataset):
    """The rank's share of the sorted file stream, loaded item by item (in DataLoader workers or not).

    With W workers, worker w takes every W-th item of the rank's share and yields one item (a
    skip marker too) per file, so the DataLoader's round-robin gives the items back in order.
    """

    def __init__(self, root, config: ScreenConfig, done: set, info: dist_helpers.DistInfo,
                 paths: Iterable[str] | None = None):
        self.root, self.config, self.done, self.info, self.paths = root, config, done, info, paths

    def __iter__(self) -> Iterator[FileItem]:
        worker = torch.utils.data.get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        source = self.paths if self.paths is not None else iter_screen_files(self.root)
        for local, (index, path) in enumerate(dist_helpers.shard(source, self.info)):
            if local % nworkers == wid:
                yield load_file(index, path, self.config, self.done)


def _identity(item):
    return item


def iter_items(stream: FileStream, workers: int) -> Iterator[FileItem]:
    if workers == 0:
        yield from stream
        return
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_identity,
                                         prefetch_factor=2, persistent_workers=False)
    yield from loader

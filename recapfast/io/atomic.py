"""The one way recapfast writes an output file: atomic, durable, never through a symbolic link.

``write_file`` (and ``write_text`` / ``write_json``) creates a temp file with a random name
(``.rf-<hex>.tmp``) in the destination folder with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (so a planted
file or symlink there is never opened), writes it, ``fsync``s it, renames it onto the final name
and ``fsync``s the folder: a reader sees the old file or the complete new one, never a torn one,
also after a power loss.  ``AppendFile`` is the append-only counterpart for record logs (JSON
Lines): ``O_APPEND | O_NOFOLLOW``, one ``write`` per line, ``fsync`` per batch, and a batch that
fails half-way is cut back so the file keeps only complete lines.  ``publish_dir`` is the same for a
whole folder (filled under a random temp name beside it, then renamed into place).

Symbolic links: the final name must not be a symlink (refused, never replaced or followed), and
with ``root`` (the output folder) every folder between ``root`` and the file is opened with
``O_NOFOLLOW`` (created when ``mkdir``), so a symlink planted anywhere under the output cannot
redirect a write outside it.  All operations go through the opened folder's descriptor
(``dir_fd``), so swapping a folder for a symlink after the check does not help either.

Disk errors (full, read-only, no permission, quota; :data:`DISK_ERRNOS`) become one
:class:`DiskError` line naming the path; the temp file is removed and the previous content of
the destination is untouched.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from recapfast.errors import UserError

DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
}
TEMP_PREFIX = ".rf-"
O_NOFOLLOW = _O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class OutputError(UserError):
    """An output path that would overwrite, is a symbolic link or a folder, or leaves the output folder."""


class DiskError(UserError):
    """The file system refused a write (full, read-only, no permission, quota)."""


def disk_error(err: OSError, path) -> DiskError | None:
    """The one-line DiskError for a full/read-only/denied write of ``path``, or None for other errors."""
    if err.errno not in DISK_ERRNOS:
        return None
    return DiskError(f"cannot write {path}: {DISK_ERRNOS[err.errno]}; everything finished before is kept "
                     f"(fix it and rerun; commands with --resume continue where they stopped)")


@contextmanager
def disk_errors(path) -> Iterator[None]:
    """Turn a disk-full/read-only/permission OSError inside the block into a DiskError naming ``path``."""
    try:
        yield
    except OSError as err:
        mapped = disk_error(err, path)
        if mapped is None:
            raise
        raise mapped from err


def _symlink_error(path) -> OutputError:
    return OutputError(f"{path}: is a symbolic link; recapfast writes only plain files and folders "
                       f"inside the output folder")


def _relative_parts(folder: Path, root: Path) -> tuple[str, ...]:
    try:
        rel = folder.relative_to(root)
    except ValueError:
        raise OutputError(f"{folder}: is outside the output folder {root}") from None
    if any(part in ("..", "") for part in rel.parts):
        raise OutputError(f"{folder}: '..' would leave the output folder {root}")
    return rel.parts


def open_dir(folder, root=None, mkdir: bool = False) -> int:
    """A descriptor of ``folder``.  With ``root``: every component below ``root`` is opened with
    O_NOFOLLOW (a symlink is refused) and, with ``mkdir``, created when missing."""
    folder = Path(folder)
    if root is None:
        with disk_errors(folder):
            if mkdir:
                folder.mkdir(parents=True, exist_ok=True)
            return os.open(folder, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    root = Path(root)
    parts = _relative_parts(folder, root)
    with disk_errors(root):
        fd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    here = root
    try:
        for part in parts:
            here = here / part
            with disk_errors(here):
                if mkdir:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    nfd = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(here):
                        raise _symlink_error(here) from None
                    raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_target(dfd: int, name: str, path: Path, overwrite: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_error(path)
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path}: is a folder, not a file")
    if not overwrite:
        raise OutputError(f"{path}: exists (use --force to overwrite)")


def write_file(path, data: bytes | None = None, *, writer: Callable[[BinaryIO], None] | None = None,
               root=None, overwrite: bool = True, mkdir: bool = False, durable: bool = True,
               mode: int = 0o644) -> Path:
    """Atomically replace ``path`` by ``data`` (or what ``writer(fh)`` writes to a binary file).

    ``root``: the output folder ``path`` must stay inside (folders below it are opened without
    following symlinks; ``mkdir`` creates them).  ``overwrite=False`` refuses an existing file
    (checked again at the rename, which then links instead of replacing).  ``durable=False``
    skips the two fsyncs (bulk data that can be regenerated; still atomic).
    """
    if (data is None) == (writer is None):
        raise TypeError("give exactly one of data and writer")
    path = Path(path)
    name = path.name
    if name in ("", ".", ".."):
        raise OutputError(f"{path}: not a file name")
    dfd = open_dir(path.parent, root, mkdir)
    try:
        with disk_errors(path):
            _check_target(dfd, name, path, overwrite)
            tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    if writer is not None:
                        writer(fh)
                    else:
                        fh.write(data)
                    fh.flush()
                    if durable:
                        os.fsync(fh.fileno())
                if overwrite:
                    _check_target(dfd, name, path, True)
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                else:
                    try:
                        os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                    except FileExistsError:
                        raise OutputError(f"{path}: exists (use --force to overwrite)") from None
                    os.unlink(tmp, dir_fd=dfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
                raise
            if durable:
                os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


NAME_MAX = 255      # bytes in one file name component (Linux, macOS, Windows filesystems)


def fit_name(stem: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``stem + suffix`` as one file name; when that is over ``limit`` bytes (an output named after a 250-character
    input file), the stem is cut and ``~`` plus 16 hex digits of the sha256 of the whole name keep it unique
    (the caller records which input each output came from)."""
    import hashlib

    name = stem + suffix
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    tag = "~" + hashlib.sha256(raw).hexdigest()[:16]
    room = max(0, limit - len(os.fsencode(tag + suffix)))
    cut = os.fsencode(stem)[:room]
    try:
        stem.encode("utf-8")
        short = cut.decode("utf-8", "ignore")     # a character cut in half is dropped, never half kept
    except UnicodeEncodeError:                   # a non-UTF-8 name stays bytes (surrogate escapes)
        short = os.fsdecode(cut)
    return short + tag + suffix


def write_text(path, text: str, **kw) -> Path:
    return write_file(path, text.encode("utf-8"), **kw)


def write_json(path, obj, indent: int | None = 2, allow_nan: bool = False, **kw) -> Path:
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=allow_nan) + "\n"
    return write_text(path, text, **kw)


def text_writer(fill: Callable, newline: str | None = None) -> Callable[[BinaryIO], None]:
    """A ``writer`` for :func:`write_file` that gives ``fill`` a UTF-8 text stream (csv, json.dump)."""
    import io

    def write(fh: BinaryIO) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline=newline)
        fill(text)
        text.flush()
        text.detach()

    return write


def publish_dir(dest, build: Callable[[Path], None]) -> bool:
    """Make folder ``dest`` appear complete or not at all: ``build(tmp)`` fills a fresh temp folder
    (``.rf-<hex>.tmp`` beside ``dest``), which is then renamed onto ``dest``.  Returns False (and removes the
    temp folder) when ``dest`` already exists, e.g. made meanwhile by a concurrent process; a failing
    ``build`` leaves no temp folder behind."""
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
    with disk_errors(dest):
        tmp.mkdir()
        try:
            build(tmp)
            if dest.exists() or dest.is_symlink():
                return False
            try:
                os.rename(tmp, dest)
            except OSError as err:
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            dfd = open_dir(dest.parent)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def remove(path, root=None) -> bool:
    """Unlink ``path`` (a symlink itself, never its target); folders below ``root`` not followed."""
    path = Path(path)
    try:
        dfd = open_dir(path.parent, root)
    except FileNotFoundError:
        return False
    try:
        with disk_errors(path):
            try:
                os.unlink(path.name, dir_fd=dfd)
                return True
            except FileNotFoundError:
                return False
    finally:
        os.close(dfd)


class AppendFile:
    """Append-only log of complete lines: ``O_APPEND | O_NOFOLLOW``, fsync per batch.

    A batch that fails half-way (disk full) is truncated back to where it began, so the file
    keeps only complete lines and a later ``--resume`` sees exactly the finished records.
    """

    def __init__(self, path, root=None):
        self.path = Path(path)
        dfd = open_dir(self.path.parent, root)
        try:
            with disk_errors(self.path):
                try:
                    self.fd = os.open(self.path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_NOFOLLOW |
                                      _O_CLOEXEC, 0o644, dir_fd=dfd)
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        raise _symlink_error(self.path) from None
                    raise
                if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                    os.close(self.fd)
                    raise OutputError(f"{self.path}: is not a regular file")
                os.fsync(dfd)
        finally:
            os.close(dfd)

    def write_lines(self, lines: Iterable[bytes]) -> int:
        """Append each line (bytes ending in a newline) with one write, then fsync; returns the count."""
        start = os.fstat(self.fd).st_size
        n = 0
        try:
            with disk_errors(self.path):
                for data in lines:
                    written = os.write(self.fd, data)
                    while written < len(data):   # short writes are rare on regular files; finish the line
                        written += os.write(self.fd, data[written:])
                    n += 1
                os.fsync(self.fd)
        except BaseException:
            try:
                os.ftruncate(self.fd, start)
                os.fsync(self.fd)
            except OSError:
                pass
            raise
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "AppendFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["DISK_ERRNOS", "NAME_MAX", "fit_name", "AppendFile", "DiskError", "OutputError", "disk_error", "disk_errors", "open_dir",
           "publish_dir", "remove", "text_writer", "write_file", "write_json", "write_text"]

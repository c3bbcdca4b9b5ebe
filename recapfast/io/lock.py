"""Output locks: one writer per output, for the whole run, whatever the process layout.

Every command that writes an output takes an advisory ``flock`` on a lock file beside it
(``results.jsonl`` -> ``.results.jsonl.lock``, ``adv/`` -> ``.adv.lock``: hidden) before it checks, clears
or writes anything, and holds it until it has finished.  A second writer of the same output —
a fresh run, a ``--resume``, ``--force``, or a torchrun job with any number of ranks — finds the
lock taken and stops with one line (exit code 1) before touching the output.

Under torchrun only rank 0 takes the lock, and its outcome is broadcast so every rank of the job
either proceeds or raises the same error (no rank writes a part file of a job that lost the
race); the CLI prints it on every rank and only then lets them exit (``errors.every_rank``).
The lock file holds the owner's host and pid (for the message) and is left in place:
deleting it on exit would let a third process lock a fresh file while a second still holds the
old one.  ``flock`` locks are released by the kernel when the holder exits, ``kill -9`` included,
so a crashed run never leaves a stale lock; on NFS Linux maps ``flock`` onto POSIX locks, which
the server arbitrates between machines.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterable

from recapfast.errors import every_rank
from recapfast.io.atomic import DiskError, OutputError, disk_errors

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def lock_path(out) -> Path:
    """``.NAME.lock`` in the output's real folder: every spelling of one output (``.``, ``..``, relative, absolute,
    through a linked folder) takes the same lock.  The output itself is not resolved (it may be a link, which
    the output checks refuse)."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        out = out.resolve()
    name = out.name or "root"
    return out.parent.resolve() / f".{name}.lock"     # hidden: a work folder does not fill up with lock files


class OutputLock:
    """Exclusive, non-blocking locks on the lock files of ``outputs``; a context manager."""

    def __init__(self, outputs: Iterable):
        unique = {lock_path(p): Path(p) for p in outputs if p is not None}    # one lock per output, however spelt
        self.outputs = [unique[key] for key in sorted(unique, key=str)]
        self.fds: list[int] = []
        self.held = False               # the job holds the outputs (under torchrun: rank 0's flock)

    def acquire(self) -> "OutputLock":
        try:
            for out in self.outputs:
                self.fds.append(_lock_one(out))
        except BaseException:
            self.release()
            raise
        self.held = True
        return self

    def release(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)            # closing the last descriptor releases the flock
            except OSError:
                pass
        self.fds = []
        self.held = False

    def __enter__(self) -> "OutputLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_one(out: Path) -> int:
    path = lock_path(out)
    if not path.parent.is_dir():
        raise OutputError(f"{out}: folder {path.parent} does not exist (recapfast creates only the last "
                          f"component of an output path)")
    with disk_errors(path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OutputError(f"{path}: is a symbolic link; recapfast writes only plain files") from None
            raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        owner = _owner(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"{out}: another recapfast process{owner} is writing it (lock {path}); "
                              f"wait for it to finish or choose another output") from None
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
    except OSError:
        pass                            # the owner line is informative only
    return fd


def _owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if len(text) == 2 and text[1].isdigit():
        return f" (pid {text[1]} on {text[0]})"
    return ""


def lock_outputs(*outputs) -> OutputLock:
    """Lock ``outputs`` for this job.  Under torchrun rank 0 locks and every rank gets its outcome.

    Returns the held lock (release it, or use it as a context manager, when the job is done);
    raises OutputError/DiskError on every rank when the outputs are taken.
    """
    from recapfast import distributed

    info = distributed.current()
    lock = OutputLock(outputs)
    if not info.enabled:
        return lock.acquire()
    failure = None
    if info.is_main:
        try:
            lock.acquire()
        except (OutputError, DiskError) as err:
            failure = (type(err).__name__, str(err))
    failure = distributed.broadcast_object(failure)
    if failure is not None:
        raise every_rank((DiskError if failure[0] == "DiskError" else OutputError)(failure[1]))
    lock.held = True
    return lock


__all__ = ["OutputLock", "lock_outputs", "lock_path"]

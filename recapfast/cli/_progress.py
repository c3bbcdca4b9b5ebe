"""Progress on stderr: a rich bar in a terminal; otherwise (a log file, a pipe, CI) one plain line at least every
``interval`` seconds with done/total, the rate and the ETA, so a long job redirected to a file is never silent.

A background thread prints the lines, so a step that takes minutes (an APGD batch) still shows the job alive;
it holds them while the C++ core compiles (that one line reports its own progress).
``RECAPFAST_PROGRESS_INTERVAL`` (seconds, default 10) sets the interval.
"""
from __future__ import annotations

import os
import threading
import time

DEFAULT_INTERVAL = 10.0


def _interval() -> float:
    try:
        value = float(os.environ.get("RECAPFAST_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if 0 < value < 1e6 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _compiling() -> bool:
    """The C++ core is being compiled: its one stderr line is open (it reports its own progress), so wait."""
    import sys

    build = sys.modules.get("recapfast.ops._build")
    state = getattr(build, "STATE", None)
    return bool(state is not None and (state.building or state.line_open))


class LineProgress:
    """Context manager; ``advance(n)`` adds n done.  Prints a line at the start, every ``interval`` s, and at the end."""

    def __init__(self, say, total: int | None, description: str, interval: float | None = None,
                 clock=time.monotonic):
        self.say, self.total, self.description = say, total, description
        self.interval = _interval() if interval is None else float(interval)
        self.clock = clock
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += int(n)

    def line(self, final: bool = False) -> str:
        with self._lock:
            done = self.done
        elapsed = max(self.clock() - self._start, 1e-9)
        rate = done / elapsed
        count = f"{done}/{self.total}" if self.total is not None else f"{done} done"
        text = f"{self.description}: {count}"
        if self.total:
            text += f" ({100.0 * done / self.total:.0f}%)"
        text += f", {rate:.2f}/s, elapsed {_duration(elapsed)}"
        if not final and self.total is not None:
            eta = _duration((self.total - done) / rate) if rate > 0 and done <= self.total else "unknown"
            text += f", ETA {eta}"
        return text

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not _compiling():
                self.say(self.line())


    def __enter__(self) -> "LineProgress":
        self._start = self.clock()
        self.say(self.line())
        self._thread = threading.Thread(target=self._run, name="recapfast-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc[0] is None:
            self.say(self.line(final=True))


def progress_bar(console, total: int | None, description: str):
    """Progress for ``console`` (rich, stderr): use the first as a context manager, call the second, advance(n)."""
    if not console.quiet and not console.is_terminal:
        lines = LineProgress(lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True),
                             total, description)
        return lines, lines.advance
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True, disable=console.quiet)
    task = progress.add_task(description, total=total)
    return progress, (lambda n=1: progress.advance(task, n))


__all__ = ["LineProgress", "progress_bar"]

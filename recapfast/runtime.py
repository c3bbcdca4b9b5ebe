"""Process-wide compute settings that every command applies and every result file records.

Threads: torch's intra-op thread count. On a shared machine whose other processes already keep
the cores busy, more threads than free cores make oneDNN's worker threads wait for CPU time on
every op; measured on the shared 2-core dev box, a 64-image forward took 500 ms with 2 threads
against 53 ms with 1 (bench/NOTES.md). So unless told otherwise (``--threads N`` or
``RECAPFAST_THREADS``), recapfast takes the cores the 1-minute load average leaves free:
``round(cores - load)``, at least 1 and at most the core count. Idle threads wait passively
(``OMP_WAIT_POLICY=PASSIVE`` is set before torch starts its thread pool, unless already set),
so a waiting thread does not take CPU time from other processes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

_ENV = "RECAPFAST_THREADS"


@dataclass
class Threads:
    threads: int
    reason: str
    cores: int
    load_avg_1min: float | None

    def to_dict(self) -> dict:
        return asdict(self)


_current: Threads | None = None


def prefer_passive_waiting() -> None:
    """Ask OpenMP for passive waiting; only effective before torch's thread pool starts."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def choose_threads(requested: int | None = None, cores: int | None = None,
                   load: float | None = None) -> Threads:
    """The thread count for this process and why (``requested`` > $RECAPFAST_THREADS > free cores)."""
    cores = cores or os.cpu_count() or 1
    if load is None and hasattr(os, "getloadavg"):
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
    if requested is None and os.environ.get(_ENV):
        try:
            requested = int(os.environ[_ENV])
        except ValueError:
            raise ValueError(f"{_ENV} must be a positive integer, got {os.environ[_ENV]!r}") from None
        if requested < 1:
            raise ValueError(f"{_ENV} must be a positive integer, got {requested}")
        return Threads(requested, f"{_ENV}={requested}", cores, load)
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be a positive integer, got {requested}")
        return Threads(int(requested), "--threads", cores, load)
    if load is None:
        return Threads(cores, "all cores (no load average on this system)", cores, None)
    free = max(1, min(cores, int(round(cores - load))))
    return Threads(free, f"{cores} cores, 1-min load {load:.2f}: {free} free", cores, load)


def apply_threads(requested: int | None = None) -> Threads:
    """Choose and set torch's intra-op thread count for this process; remembered for :func:`settings`."""
    import torch

    global _current
    _current = choose_threads(requested)
    torch.set_num_threads(_current.threads)
    return _current


def settings() -> dict:
    """What result files record: threads (as chosen, or torch's current count) and the op backend."""
    import torch

    from recapfast import ops

    threads = _current.to_dict() if _current is not None else {"threads": torch.get_num_threads(),
                                                                 "reason": "torch default"}
    try:
        backend = ops.active_backend()
    except RuntimeError:
        backend = None
    return {"threads": threads, "op_backend": backend, "torch": torch.__version__}


__all__ = ["Threads", "choose_threads", "apply_threads", "prefer_passive_waiting", "settings"]

"""The per-file view `recapfast screen` prints on stdout: a compact table of the records (all of them, or the first
and the worst N with the count), the summary line, and what "fragile" means.

It streams the records file (one JSON object per line) and keeps at most 2N small rows, so a million-file output
costs no memory.  "Worst" = least trustworthy verdict: the smallest ``flip_eps`` first (a file the probes never
flipped comes last), ties broken by how close p(recaptured) is to the threshold.
"""
from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import Iterable, Iterator

HEADER = ("path", "decision", "p(recaptured)", "flip_eps", "fragile")
PATH_WIDTH = 70


def fragile_line(fragile_eps: float) -> str:
    return (f"fragile = a change of at most {fragile_eps:g} grey level(s) per pixel (--fragile-eps) flips the "
            "decision: do not rely on that verdict.\nflip_eps = the smallest probed change (grey levels, FGSM or "
            "LLCM) that flips it; >N: none of the probes up to N did.")


def read_records(path: Path) -> Iterator[dict]:
    """The records of a screen output, in order (a torn last line, left by a crash, is skipped)."""
    with open(path, "rb") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _row(rec: dict, max_probe: float | None) -> tuple[str, ...]:
    flip = rec.get("flip_eps")
    if rec.get("fragile") is None:
        flip_text, fragile = "n/a", "n/a"             # not probed (--probe-eps none)
    else:
        flip_text = f"{flip:g}" if flip is not None else (f">{max_probe:g}" if max_probe else "none")
        fragile = "YES" if rec["fragile"] else "no"
    path = rec["path"]
    if len(path) > PATH_WIDTH:
        path = "..." + path[-(PATH_WIDTH - 3):]
    return (path, rec["decision"], f"{rec['p_recaptured']:.3f}", flip_text, fragile)


def _badness(rec: dict, threshold: float) -> tuple[float, float]:
    flip = rec.get("flip_eps")
    return (math.inf if flip is None else float(flip), abs(float(rec["p_recaptured"]) - threshold))


def select(records: Iterable[dict], n: int, threshold: float) -> tuple[list, list, int]:
    """(first n screened records, worst n of them worst first, number screened); error records are left out."""
    first: list = []
    heap: list = []                   # max-heap (negated keys) of the n worst seen so far
    count = 0
    for rec in records:
        if rec.get("error") is not None or rec.get("p_recaptured") is None:
            continue
        small = {k: rec.get(k) for k in ("path", "decision", "p_recaptured", "flip_eps", "fragile")}
        if len(first) < n:
            first.append(small)
        flip, dist = _badness(rec, threshold)
        item = (-flip, -dist, -count, small)
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif n and item > heap[0]:
            heapq.heapreplace(heap, item)
        count += 1
    worst = [item[3] for item in sorted(heap, reverse=True)]
    return first, worst, count


def _format(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        out.append("  ".join(cells).rstrip())
    return out


def table(records_path: Path, summary: dict, n: int, threshold: float, fragile_eps: float,
          probe_eps: tuple = (), summary_file: str | None = None) -> str:
    """The text `screen` prints: summary line, the table (all rows, or first and worst ``n``), the legend."""
    first, worst, count = select(read_records(records_path), n, threshold)
    max_probe = max(probe_eps) if probe_eps else None
    dec = summary.get("decisions") or {}
    frag = summary.get("fragile")
    lines = [f"{summary.get('records', count)} file(s): {summary.get('screened', count)} screened, "
             f"{summary.get('errors', 0)} error(s)"
             + (" (named on stderr)" if summary.get("errors") else "")
             + f"; {dec.get('recaptured', 0)} recaptured, {dec.get('original', 0)} original"
             + ("" if frag is None else f"; {frag} fragile"), ""]
    if count and n:
        if count <= 2 * n:
            first = list(read_for_all(records_path))
            lines += _format([HEADER] + [_row(r, max_probe) for r in first])
        else:
            lines += [f"first {len(first)} of {count}:"] + _format([HEADER] + [_row(r, max_probe) for r in first])
            lines += ["", f"worst {len(worst)} of {count} (smallest flip_eps, then p closest to {threshold:g}):"]
            lines += _format([HEADER] + [_row(r, max_probe) for r in worst])
        lines.append("")
    if frag is not None:
        lines.append(fragile_line(fragile_eps))
    tail = f"all records: {records_path}"
    if summary_file:
        tail += f"; summary: {summary_file}"
    lines.append(tail)
    return "\n".join(lines)


def read_for_all(records_path: Path) -> Iterator[dict]:
    return (r for r in read_records(records_path) if r.get("error") is None and r.get("p_recaptured") is not None)


__all__ = ["fragile_line", "read_records", "select", "table"]

"""Progress on stderr: right counters in a terminal (synth used to end at 820/40), and, when stderr is a file or a
pipe, a line at least every interval with done/total, rate and ETA (long jobs used to print nothing)."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

from recapfast.cli._progress import LineProgress
from screen_helpers import env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_on_a_terminal(args: list[str], timeout: float = 240) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (what a person sees); returns (exit code, everything it drew)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "recapfast", *args], stdout=subprocess.DEVNULL, stderr=slave,
                            env=env(TERM="xterm-256color", COLUMNS="160"))
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_synth_bar_on_a_terminal_counts_to_n_of_n(tmp_path):
    rc, drawn = _run_on_a_terminal(["synth", str(tmp_path / "d"), "--size", "16", "--count", "20", "--seed", "1"])
    assert rc == 0, drawn
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+)", drawn)]
    assert counts, drawn
    assert all(total == 40 for _, total in counts), counts
    assert max(done for done, _ in counts) == 40, counts          # was 820/40: the running total was added
    assert (40, 40) in counts


def test_synth_to_a_pipe_prints_plain_lines_with_rate_and_eta(tmp_path):
    res = subprocess.run([sys.executable, "-m", "recapfast", "synth", str(tmp_path / "d"), "--size", "16",
                          "--count", "20", "--seed", "1"], capture_output=True, text=True, timeout=240,
                         env=env(RECAPFAST_PROGRESS_INTERVAL="0.05"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("synth: ")]
    assert lines[0].startswith("synth: 0/40 (0%)") and lines[-1].startswith("synth: 40/40 (100%)"), res.stderr
    assert "\x1b" not in res.stderr, "no terminal codes in a log"
    assert re.search(r"synth: \d+/40 \(\d+%\), [\d.]+/s, elapsed \d+:\d\d, ETA", res.stderr), res.stderr


def test_line_progress_prints_while_a_step_is_still_running():
    """A step that takes several intervals (an APGD batch) still gets a line per interval."""
    said = []
    with LineProgress(said.append, 10, "eval baseline", interval=0.05) as bar:
        bar.advance(3)
        time.sleep(0.4)                       # no advance for 8 intervals
        bar.advance(7)
    middle = [s for s in said[1:-1] if s.startswith("eval baseline: 3/10 (30%)")]
    assert len(middle) >= 3, said
    assert all(", ETA " in s and "/s" in s for s in middle)
    assert said[-1].startswith("eval baseline: 10/10 (100%)") and "ETA" not in said[-1]


def test_progress_lines_wait_while_the_cpp_core_compiles(monkeypatch):
    """The compile's one stderr line stays whole: no progress line is printed into it (seen on a fresh clone)."""
    from recapfast.ops import _build

    monkeypatch.setattr(_build, "STATE", _build.BuildState(building=True))
    said = []
    with LineProgress(said.append, 5, "eval baseline", interval=0.05):
        time.sleep(0.3)
        assert len(said) == 1                     # the opening line only
        _build.STATE.building, _build.STATE.line_open = False, True
        time.sleep(0.2)
        assert len(said) == 1                     # the verdict is not appended yet
        _build.STATE.line_open = False
        time.sleep(0.3)
    assert len(said) >= 4

"""Output locks: a second writer of the same output is refused, whatever its mode or process layout.

Issue 12: `screen --resume` while another `screen` still wrote the same output gave 704 records
for 400 images.  Here the first writer is a real screening process; the second one (resume,
fresh with --force, or a 2-rank torchrun job) must stop with one line and touch nothing, and the
first must finish with exactly one record per file.  Under torchrun every rank prints its line before
any exits (torchrun stops the others at the first exit; without that wait this failed 3 runs in 5 at
load 6).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from recapfast.io.atomic import OutputError
from recapfast.io.lock import OutputLock, lock_path

from screen_helpers import env, png_bytes, read_jsonl, save_tiny_model

FILES = 400                  # the case: 400 images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock") / "in"
    rng = np.random.default_rng(12)
    for i in range(FILES):
        sub = root / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}.png").write_bytes(png_bytes(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("lockmodel") / "m.safetensors")


def screen_cmd(root, out, model, *extra, torchrun=False):
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if torchrun \
        else [sys.executable]
    return head + ["-m", "recapfast", "screen", str(root), "--out", str(out), "--model", str(model), "--size", "32",
                   "--probe-eps", "1,2,3,4,5,6", "--batch-size", "4", "--device", "cpu", "--quiet", *extra]


def lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(predicate, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the first writer finished before the second could start; make it longer"
        assert time.monotonic() < deadline, "the first writer did not start writing"
        time.sleep(0.02)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("recapfast: error")]


def test_second_writers_are_refused_and_the_first_completes(folder, model, tmp_path):
    """While a real `screen` writes r.jsonl: `--resume`, `--force`, `--resume-by sha256` and a 2-rank
    torchrun `--resume` (another rank layout) are all refused with one line per process; the first
    writer then finishes with exactly one record per file."""
    out = tmp_path / "r.jsonl"
    first = subprocess.Popen(screen_cmd(folder, out, model), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lines(out) >= 4, first)
        seconds = [subprocess.Popen(screen_cmd(folder, out, model, *extra, torchrun=dist), env=env(), cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for extra, dist in ((("--resume",), True), (("--resume",), False), (("--force",), False),
                                       (("--resume", "--resume-by", "sha256"), False))]
        for second, ranks in zip(seconds, (2, 1, 1, 1)):       # all started while the first writes
            stdout, stderr = second.communicate(timeout=240)
            assert second.returncode != 0 and (ranks == 2 or second.returncode == 1), stderr[-2000:]
            refusals = error_lines(stderr)
            assert len(refusals) == ranks, stderr[-3000:]      # one line per process (per rank under torchrun)
            assert all("another recapfast process" in x and "is writing it" in x and str(out) in x for x in refusals)
            assert stdout == "" or ranks == 2
        assert not list(tmp_path.glob("r.jsonl.part*"))        # no rank of the torchrun job wrote a part file
        assert first.poll() is None, "the first writer ended while the second ones ran; make it longer"
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    records = read_jsonl(out)
    paths = [r["path"] for r in records]
    assert len(records) == len(set(paths)) == FILES            # records == files: no duplicate, none lost
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["records"] == summary["this_run"]["files_processed"] == FILES


def test_lock_is_per_output_and_released(tmp_path):
    out = tmp_path / "a.jsonl"
    with OutputLock([out]):
        with pytest.raises(OutputError, match="another recapfast process .*pid"):
            OutputLock([out]).acquire()
        with OutputLock([tmp_path / "b.jsonl"]):      # another output: independent
            pass
    with OutputLock([out]):                           # released on exit
        pass
    assert lock_path(out) == tmp_path / ".a.jsonl.lock"               # hidden (issue 22: 10 visible ones per folder)
    assert lock_path(tmp_path / "adv/") == tmp_path / ".adv.lock"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []


def test_lock_file_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / ".a.jsonl.lock").symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        OutputLock([tmp_path / "a.jsonl"]).acquire()
    assert victim.read_text() == "keep"

"""Resume and crash safety: kill -9 a real screening process, resume, compare with an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from recapfast.engine.screen import OutputError, ScreenConfig, screen_folder

from screen_helpers import env, png_bytes, read_jsonl, save_tiny_model


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """300 small PNGs (distinct content) in three folders."""
    root = tmp_path_factory.mktemp("many") / "in"
    rng = np.random.default_rng(2)
    for i in range(300):
        folder = root / f"part{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:04d}.png").write_bytes(png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    return root


def screen_cmd(root, out, model, *extra):
    return [sys.executable, "-m", "recapfast", "screen", str(root), "--out", str(out), "--model", str(model),
            "--size", "32", "--probe-eps", "1,2,3", "--batch-size", "8", "--device", "cpu", "--quiet", *extra]


def count_lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(many, tmp_path):
    model = save_tiny_model(tmp_path / "m.safetensors")
    reference = tmp_path / "ref.jsonl"
    done = subprocess.run(screen_cmd(many, reference, model), env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = read_jsonl(reference)
    assert len(expected) == 300

    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(screen_cmd(many, out, model), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while count_lines(out) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    partial = out.read_bytes()
    before = partial.count(b"\n")
    assert 40 <= before < 300
    assert not (tmp_path / "killed.summary.json").exists()

    # Plain re-run refuses to overwrite; --resume continues.
    again = subprocess.run(screen_cmd(many, out, model), env=env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr
    resumed = subprocess.run(screen_cmd(many, out, model, "--resume"), env=env(), capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    got = read_jsonl(out)                          # asserts no torn line
    paths = [r["path"] for r in got]
    assert len(paths) == len(set(paths)) == 300    # no duplicates, nothing lost
    assert got == expected                         # same records, same order
    summary = (tmp_path / "killed.summary.json").read_text()
    assert '"files_skipped_as_done": %d' % before in summary


def test_torn_last_line_is_cut_and_completed(many, tiny, tmp_path):
    cfg = ScreenConfig(size=32, probe_eps=(), batch_size=16)
    reference = tmp_path / "ref.jsonl"
    screen_folder(tiny, many / "part0", reference, cfg)
    lines = reference.read_bytes().splitlines(keepends=True)
    out = tmp_path / "torn.jsonl"
    out.write_bytes(b"".join(lines[:37]) + lines[37][: len(lines[37]) // 2])     # a crash mid-line
    logs = []
    res = screen_folder(tiny, many / "part0", out, cfg, resume=True, log=logs.append)
    assert out.read_bytes() == reference.read_bytes()
    assert any("torn" in m for m in logs)
    assert res.summary["this_run"]["files_skipped_as_done"] == 37
    assert res.summary["this_run"]["files_processed"] == 100 - 37


def test_resume_by_sha256_skips_renamed_files(tiny, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(4)
    for i in range(5):
        (root / f"a{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    (root / "broken.png").write_bytes(b"")
    for mode, expected_new in (("sha256", 0), ("stat", 1)):
        out = tmp_path / f"{mode}.jsonl"
        cfg = ScreenConfig(size=32, probe_eps=(), resume_by=mode)
        screen_folder(tiny, root, out, cfg)
        os.rename(root / "a0.png", root / "z0.png")        # same content, new path
        res = screen_folder(tiny, root, out, cfg, resume=True)
        os.rename(root / "z0.png", root / "a0.png")
        assert res.summary["this_run"]["files_processed"] == expected_new, mode
        assert res.summary["this_run"]["files_skipped_as_done"] == 6 - expected_new


def test_resume_refuses_a_file_that_is_not_screening_output(many, tiny, tmp_path):
    out = tmp_path / "other.jsonl"
    out.write_text("not json at all\n")
    with pytest.raises(OutputError, match="not a screening record"):
        screen_folder(tiny, many / "part1", out, ScreenConfig(size=32, probe_eps=()), resume=True)
    assert out.read_text() == "not json at all\n"

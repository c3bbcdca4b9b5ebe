"""One atomic writer: random temp names created O_EXCL|O_NOFOLLOW, no write through planted symlinks.

Issue 12: a symlink planted at `r.summary.json.tmp` or `original/000000.png.tmp` was followed
(screen overwrote the target with JSON; `attack --force` with PNG data).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recapfast.io import atomic
from recapfast.io.atomic import AppendFile, OutputError, write_file
from recapfast.cli import app

from screen_helpers import read_jsonl, save_tiny_model, write_labelled

runner = CliRunner()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("amodel") / "m.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("adata") / "data", 2, seed=8)


def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text("precious")
    return v


def test_old_temp_names_planted_as_symlinks_are_never_followed(model_path, data, tmp_path):
    v = victim(tmp_path)
    out = tmp_path / "o" / "r.jsonl"
    out.parent.mkdir()
    (out.parent / "r.summary.json.tmp").symlink_to(v)
    (out.parent / "r.jsonl.tmp").symlink_to(v)
    res = runner.invoke(app, ["screen", str(data), "--out", str(out), "--model", str(model_path), "--size", "32",
                              "--probe-eps", "none", "--csv", str(out.parent / "r.csv"), "-q", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert v.read_text() == "precious"
    assert len(read_jsonl(out)) == 4 and (out.parent / "r.summary.json").is_file()
    assert not list(out.parent.glob(".rf-*.tmp"))                 # no temp file left behind

    adv = tmp_path / "adv"
    (adv / "original").mkdir(parents=True)
    (adv / "original" / "000000.png.tmp").symlink_to(v)
    (adv / "manifest.json.tmp").symlink_to(v)
    res = runner.invoke(app, ["attack", str(data), "--out", str(adv), "--model", str(model_path), "--size", "32",
                              "--force", "-q", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert v.read_text() == "precious"
    assert (adv / "original" / "000000.png").is_file() and not (adv / "original" / "000000.png").is_symlink()


def test_symlinks_anywhere_under_the_output_are_refused(model_path, data, tmp_path):
    v = victim(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    adv = tmp_path / "adv"
    adv.mkdir()
    (adv / "original").symlink_to(elsewhere, target_is_directory=True)       # a planted folder link
    res = runner.invoke(app, ["attack", str(data), "--out", str(adv), "--model", str(model_path), "--size", "32",
                              "--force", "-q", "--device", "cpu"])
    lines = [x for x in res.output.splitlines() if x.startswith("recapfast: error")]
    assert res.exit_code == 1 and len(lines) == 1 and "symbolic link" in lines[0], res.output
    assert list(elsewhere.iterdir()) == []
    (adv / "original").unlink()
    (adv / "original").mkdir()
    (adv / "original" / "000001.png").symlink_to(v)                          # a planted final name
    res = runner.invoke(app, ["attack", str(data), "--out", str(adv), "--model", str(model_path), "--size", "32",
                              "--force", "-q", "--device", "cpu"])
    assert res.exit_code == 1 and "symbolic link" in res.output
    assert v.read_text() == "precious"
    out = tmp_path / "s" / "r.jsonl"
    out.parent.mkdir()
    (out.parent / "r.tiles").symlink_to(elsewhere, target_is_directory=True)
    res = runner.invoke(app, ["screen", str(data), "--out", str(out), "--model", str(model_path), "--size", "8",
                              "--tile-map-inline", "1", "--probe-eps", "none", "-q", "--device", "cpu"])
    assert res.exit_code == 1 and "symbolic link" in res.output
    assert list(elsewhere.iterdir()) == []


def test_write_file_is_atomic_and_cleans_up(tmp_path):
    target = tmp_path / "f.txt"
    write_file(target, b"one")
    assert target.read_bytes() == b"one"

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_file(target, writer=broken)
    assert target.read_bytes() == b"one"                          # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]   # temp removed
    with pytest.raises(OutputError, match="exists"):
        write_file(target, b"two", overwrite=False)
    assert target.read_bytes() == b"one"
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="folder"):
        write_file(tmp_path / "d", b"x")
    with pytest.raises(OutputError, match="outside the output folder"):
        write_file(tmp_path / "f2.txt", b"x", root=tmp_path / "d")
    write_file(tmp_path / "d" / "a" / "b.txt", b"deep", root=tmp_path / "d", mkdir=True)
    assert (tmp_path / "d" / "a" / "b.txt").read_bytes() == b"deep"


def test_append_file_cuts_a_failed_batch_back(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = AppendFile(path)
    log.write_lines([b"1\n", b"2\n"])
    real = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:
            real(fd, data[:3])                                    # a short write, then the disk is full
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(atomic.os, "write", full_disk)
    with pytest.raises(atomic.DiskError, match="log.jsonl: no space left on device"):
        log.write_lines([b"3\n", b"4444444\n", b"5\n"])
    monkeypatch.setattr(atomic.os, "write", real)
    assert path.read_bytes() == b"1\n2\n"                          # the failed batch was cut back
    log.write_lines([b"3\n"])
    log.close()
    assert path.read_bytes() == b"1\n2\n3\n"
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "victim")
    with pytest.raises(OutputError, match="symbolic link"):
        AppendFile(link)
    assert not (tmp_path / "victim").exists()


def test_publish_dir_appears_complete_or_not_at_all(tmp_path):
    dest = tmp_path / "cache" / "set"

    def fill(folder):
        (folder / "a.txt").write_text("a")
        (folder / "manifest.json").write_text("{}")

    assert atomic.publish_dir(dest, fill) is True
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "manifest.json"]
    assert atomic.publish_dir(dest, lambda folder: (folder / "b.txt").write_text("b")) is False   # already there
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "manifest.json"]

    def half(folder):
        (folder / "a.txt").write_text("a")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        atomic.publish_dir(tmp_path / "cache" / "other", half)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["set"]       # no temp folder, no half set


# Writers of files the user or a later run reads must go through recapfast.io.atomic (issue 15: "one atomic
# writer").
HAND_ROLLED = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|open\([^)\n]*[\"'][wax]b?\+?[\"']|"
                         r"(?<!atomic)\.write_text\(|\.write_bytes\(|shutil\.copy|mkstemp|NamedTemporaryFile")
ALLOWED: set = set()


def test_no_hand_rolled_writer_left_in_the_package_or_bench():
    root = Path(__file__).resolve().parent.parent
    found = []
    for folder in ("recapfast", "bench"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel == "recapfast/io/atomic.py":
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                m = HAND_ROLLED.search(line)
                if m and (rel, m.group(0)) not in ALLOWED and not line.lstrip().startswith("#"):
                    found.append(f"{rel}:{lineno}: {line.strip()}")
    assert not found, "write through recapfast.io.atomic instead:\n" + "\n".join(found)

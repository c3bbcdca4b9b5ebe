"""Disk full, read-only and denied outputs: one line naming the path, exit 1, everything kept, resumable.

Issue 12: on a full tmpfs or a read-only output, screen, attack and train exited 2 with a
traceback.  The real tests mount a small tmpfs in a private mount namespace (``unshare -m``:
nothing is visible outside the test, nothing to clean up); they need root (CI runs as root) and
are skipped where mounting is not allowed.  The simulated tests run everywhere.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import recapfast as rf
from recapfast.io import atomic
from recapfast.cli import app
from recapfast.engine.export import export_adversarial
from recapfast.engine.screen import ScreenConfig, screen_folder

from screen_helpers import env, png_bytes, read_jsonl, save_tiny_model, write_images

runner = CliRunner()
COUNT = 40


def _can_mount(tmp) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    (tmp / "probe").mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {tmp / 'probe'} && umount {tmp / 'probe'}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("disk")
    if not _can_mount(base):
        pytest.skip("mounting a tmpfs needs root and mount namespaces (unshare -m); simulated tests cover the rest")
    data = base / "data"
    rng = np.random.default_rng(30)
    for i in range(COUNT):
        sub = data / ("original" if i % 2 == 0 else "recaptured")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.png").write_bytes(png_bytes(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)))
    return base, data, save_tiny_model(base / "m.safetensors")


def in_namespace(base, script: str) -> dict:
    """Run ``script`` (bash; $MNT is a fresh tmpfs, $RF runs recapfast) in a private mount namespace.

    Every `step NAME cmd...` records NAME.rc / NAME.err under $RES for the test to read.
    """
    res = base / "results"
    shutil.rmtree(res, ignore_errors=True)
    res.mkdir()
    mnt = base / "mnt"
    mnt.mkdir(exist_ok=True)
    prelude = f"""
set -u
MNT={mnt}; RES={res}; RF="{sys.executable} -m recapfast"
step() {{ name=$1; shift; "$@" > $RES/$name.out 2> $RES/$name.err; echo $? > $RES/$name.rc; }}
"""
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", prelude + script], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = {}
    for p in res.iterdir():
        out[p.name] = p.read_bytes()
    return out


def error_line(results, name) -> str:
    lines = [x for x in results[f"{name}.err"].decode().splitlines() if x.startswith("recapfast: error")]
    assert len(lines) == 1 and "Traceback" not in results[f"{name}.err"].decode(), results[f"{name}.err"][-2000:]
    assert int(results[f"{name}.rc"]) == 1
    return lines[0]


def test_screen_disk_full_then_read_only_then_resume(setup):
    base, data, model = setup
    ref = base / "ref.jsonl"
    if not ref.exists():
        screen_folder(rf.load_model(model), data, ref, ScreenConfig(size=32, probe_eps=(1, 2), batch_size=4,
                                                                   model=str(model)))   # the CLI records --model
    cmd = f"$RF screen {data} --out $MNT/r.jsonl --model {model} --size 32 --probe-eps 1,2 --batch-size 4 " \
          f"--device cpu --quiet"
    r = in_namespace(base, f"""
mount -t tmpfs -o size=12k tmpfs $MNT
step full {cmd}
cp $MNT/r.jsonl $RES/after_full.jsonl
mount -o remount,ro $MNT
step readonly {cmd} --resume
mount -o remount,rw,size=4m $MNT
step resumed {cmd} --resume
cp $MNT/r.jsonl $RES/final.jsonl; cp $MNT/r.summary.json $RES/summary.json; ls -a $MNT > $RES/listing
""")
    line = error_line(r, "full")
    assert "no space left on device" in line and str(base / "mnt") in line
    partial = r["after_full.jsonl"]
    assert partial.endswith(b"\n") and 0 < partial.count(b"\n") < COUNT          # only complete records
    line = error_line(r, "readonly")
    assert "read-only file system" in line
    assert int(r["resumed.rc"]) == 0, r["resumed.err"][-2000:]
    final = [json.loads(x) for x in r["final.jsonl"].splitlines()]
    assert final == read_jsonl(ref)                                               # records == files, no dups
    assert json.loads(r["summary.json"])["this_run"]["files_skipped_as_done"] == partial.count(b"\n")
    assert b".rf-" not in r["listing"]                                            # no temp file left behind


def test_attack_disk_full_then_resume(setup):
    base, data, model = setup
    ref = base / "ref_adv"
    if not ref.exists():
        export_adversarial(rf.load_model(model), data, ref, "fgsm", 2.0, size=32, batch_size=4, model_name=str(model))
    cmd = f"$RF attack {data} --out $MNT/adv --model {model} --size 32 --batch-size 4 --device cpu --quiet"
    r = in_namespace(base, f"""
mount -t tmpfs -o size=80k tmpfs $MNT
step full {cmd}
find $MNT/adv -name '*.png' | wc -l > $RES/pngs_after_full
mount -o remount,size=4m $MNT
step resumed {cmd} --resume
cd $MNT/adv && tar cf $RES/adv.tar . && cd /
""")
    line = error_line(r, "full")
    assert "no space left on device" in line
    assert 0 < int(r["pngs_after_full"]) < COUNT
    assert int(r["resumed.rc"]) == 0, r["resumed.err"][-2000:]
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(r["adv.tar"])) as tar:
        got = {m.name[2:]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")}
    want = {p.relative_to(ref).as_posix(): p.read_bytes() for p in ref.rglob("*.png")}
    assert got == want                                                           # same PNGs, same bytes


def test_train_disk_full_keeps_the_last_checkpoint_and_resumes(setup):
    base, data, model = setup
    cmd = f"$RF train {data} --out $MNT/m.safetensors --batch-size 4 --size 32 --widths 4,4,8,8,8 --val-every 1 " \
          f"--device cpu --quiet"
    r = in_namespace(base, f"""
mount -t tmpfs -o size=8m tmpfs $MNT
step first {cmd} --iters 2
cat $MNT/m.safetensors $MNT/m.json $MNT/m.resume.pt | sha256sum > $RES/before
dd if=/dev/zero of=$MNT/filler bs=4k 2> /dev/null
step full {cmd} --iters 4 --resume
cat $MNT/m.safetensors $MNT/m.json $MNT/m.resume.pt | sha256sum > $RES/after
ls -a $MNT > $RES/listing
rm $MNT/filler
step resumed {cmd} --iters 4 --resume
mount -o remount,ro $MNT
step readonly {cmd} --iters 6 --resume
""")
    assert int(r["first.rc"]) == 0, r["first.err"][-2000:]
    line = error_line(r, "full")
    assert "no space left on device" in line and str(base / "mnt") in line
    assert r["before"] == r["after"]                       # the checkpoint pair and resume state are intact
    assert b".rf-" not in r["listing"]
    assert int(r["resumed.rc"]) == 0, r["resumed.err"][-2000:]
    assert "read-only file system" in error_line(r, "readonly")


def test_simulated_disk_full_during_screen_is_one_line_and_resumable(tmp_path, monkeypatch):
    """Without mounting: the 3rd batch's fsync fails with ENOSPC (the CLI in-process)."""
    data = tmp_path / "in"
    write_images(data, 12, shape=(40, 40, 3), seed=5)
    model = save_tiny_model(tmp_path / "m.safetensors")
    out = tmp_path / "r.jsonl"
    args = ["screen", str(data), "--out", str(out), "--model", str(model), "--size", "32", "--probe-eps", "none",
            "--batch-size", "4", "--device", "cpu", "-q"]
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):                   # the 3rd batch's fsync of r.jsonl fails
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    res = runner.invoke(app, args)
    monkeypatch.setattr(atomic.os, "fsync", real)
    lines = [x for x in res.output.splitlines() if x.startswith("recapfast: error")]
    assert res.exit_code == 1 and len(lines) == 1 and "no space left on device" in lines[0], res.output
    assert str(out) in lines[0]
    assert len(read_jsonl(out)) == 8                      # batches 1-2 kept, batch 3 cut back
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert len({r["path"] for r in read_jsonl(out)}) == len(read_jsonl(out)) == 12


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                        (errno.EDQUOT, "disk quota exceeded"), (errno.ENOSPC, "no space left")])
def test_simulated_refused_checkpoint_write_is_one_line(tmp_path, monkeypatch, code, words):
    """Root ignores chmod, so EACCES/EDQUOT are simulated at the open; the old checkpoint stays intact."""
    path = rf.save_checkpoint(rf.LaplacianCNN((4, 4, 8, 8, 8)), tmp_path / "m.safetensors")
    before = path.read_bytes(), path.with_suffix(".json").read_bytes()
    real = os.open

    def refused(name, flags, *a, **k):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code))
        return real(name, flags, *a, **k)

    monkeypatch.setattr(atomic.os, "open", refused)
    with pytest.raises(atomic.DiskError, match=f"m.safetensors: {words}"):      # names the file
        rf.save_checkpoint(rf.LaplacianCNN((4, 4, 4, 8, 8)), path)
    monkeypatch.setattr(atomic.os, "open", real)
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    assert rf.load_model(path).widths == (4, 4, 8, 8, 8)

"""What `recapfast screen` shows a person: a per-file table on stdout (first and worst rows when there are many), a
one-line legend of "fragile", broken files named on stderr as `eval` names them, the summary JSON in its file;
and `screen --model` takes every kind of model `eval` takes."""
from __future__ import annotations

import json
import os
import sys

import pytest

from recapfast.reporting.screen_table import select, table
from screen_helpers import cli, read_jsonl, save_tiny_model, write_images

HEADER = ["path", "decision", "p(recaptured)", "flip_eps", "fragile"]


def _rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    out, inside = [], False
    for line in lines:
        if line.split() == HEADER:
            inside = True
        elif not line.strip():
            inside = False
        elif inside:
            out.append(line.split())
    return out


def test_screen_prints_a_table_names_broken_files_and_writes_the_summary(tmp_path):
    root = tmp_path / "imgs"
    write_images(root, 3, shape=(64, 96, 3))
    (root / "broken.png").write_bytes(b"this is text, not a PNG")
    model = save_tiny_model(tmp_path / "m.safetensors")
    out = tmp_path / "r.jsonl"
    res = cli("screen", "imgs", "--out", out, "--model", model, "--size", 32, "--probe-eps", "1,2", "--device", "cpu",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not res.stdout.lstrip().startswith("{"), "the summary JSON goes to its file, not stdout"
    recs = {r["path"]: r for r in read_jsonl(out) if r.get("error") is None}
    rows = _rows(res.stdout)
    assert [r[0] for r in rows] == sorted(recs), "one row per screened file, in discovery order"
    for path, decision, p, flip, fragile in rows:
        rec = recs[path]
        assert decision == rec["decision"] and float(p) == pytest.approx(rec["p_recaptured"], abs=6e-4)
        assert flip == (f"{rec['flip_eps']:g}" if rec["flip_eps"] is not None else ">2")
        assert fragile == ("YES" if rec["fragile"] else "no")
    assert "fragile = a change of at most 1 grey level(s) per pixel" in res.stdout
    assert "4 file(s): 3 screened, 1 error(s)" in res.stdout
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["errors"] == 1 and summary["screened"] == 3
    assert "r.summary.json" in res.stdout
    broken = [line for line in res.stderr.splitlines() if "broken.png" in line]
    assert len(broken) == 1 and "undecodable" in broken[0], res.stderr


def _rec(i, flip, p, fragile_eps=1.0):
    return {"path": f"f{i:03d}.png", "decision": "recaptured" if p >= 0.5 else "original", "p_recaptured": p,
            "flip_eps": flip, "fragile": flip is not None and flip <= fragile_eps}


def test_first_and_worst_rows_with_the_count(tmp_path):
    recs = [_rec(i, None if i % 3 else float(1 + i % 5), 0.1 + 0.8 * (i % 7) / 6) for i in range(30)]
    recs.insert(5, {"path": "bad.png", "error": "undecodable", "reason": "x"})
    first, worst, count = select(recs, 4, 0.5)
    assert count == 30 and [r["path"] for r in first] == ["f000.png", "f001.png", "f002.png", "f003.png"]
    ranked = sorted((r for r in recs if "error" not in r),
                    key=lambda r: (r["flip_eps"] if r["flip_eps"] is not None else 1e9, abs(r["p_recaptured"] - 0.5)))
    assert [r["path"] for r in worst] == [r["path"] for r in ranked[:4]]
    assert worst[0]["flip_eps"] == 1.0
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = {"records": 31, "screened": 30, "errors": 1, "decisions": {"original": 15, "recaptured": 15},
               "fragile": sum(r["fragile"] for r in recs if "error" not in r)}
    text = table(path, summary, 4, 0.5, 1.0, (1.0, 2.0, 5.0))
    assert "first 4 of 30:" in text and "worst 4 of 30 (smallest flip_eps" in text
    assert len(_rows(text)) == 8 and ">5" in text
    assert len(_rows(table(path, summary, 15, 0.5, 1.0, (5.0,)))) == 30      # 30 <= 2 x 15: every row


FACTORY = """
import torch
from torch import nn


def make_detector():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
"""


@pytest.mark.parametrize("kind", ["bayar", "factory"])
def test_screen_takes_every_model_kind_eval_takes(tmp_path, kind):
    """A bundled non-Laplacian architecture and a pkg.module:factory from the working directory (no PYTHONPATH)."""
    root = tmp_path / "imgs"
    write_images(root, 2, shape=(64, 64, 3))
    args = ["--model", "bayar"]
    if kind == "factory":
        (tmp_path / "mydets").mkdir()
        (tmp_path / "mydets" / "__init__.py").write_text("")
        (tmp_path / "mydets" / "nets.py").write_text(FACTORY)
        args = ["--model", "mydets.nets:make_detector", "--input-range", "1"]
    res = cli("screen", root, "--out", tmp_path / "r.jsonl", *args, "--probe-eps", "1", "--device", "cpu",
              cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(_rows(res.stdout)) == 2 and len(read_jsonl(tmp_path / "r.jsonl")) == 2


def test_factory_imports_from_the_working_directory(tmp_path, monkeypatch):
    """Like uvicorn: `--model mypkg.nets:make` finds ./mypkg although the installed `recapfast` script does not
    put the working directory on sys.path (simulated by removing it)."""
    from recapfast.models.zoo import load_factory

    (tmp_path / "cwdpkg").mkdir()
    (tmp_path / "cwdpkg" / "__init__.py").write_text("")
    (tmp_path / "cwdpkg" / "nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    model = load_factory("cwdpkg.nets:make_detector", None)
    assert sum(p.numel() for p in model.parameters()) == 3 * 4 * 9 + 4 + 4 * 2 + 2

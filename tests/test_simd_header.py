"""csrc/cpu/simd.h preprocesses on a compiler without __has_builtin (GCC < 10): simulated with g++ -U__has_builtin
over stub system headers (issue 21, item 18)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "cpu" / "simd.h"
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def preprocess(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("cstdlib", "cstring"):            # the real ones use __has_builtin themselves on new compilers
        (stubs / name).write_text("#pragma once\n")
    return subprocess.run([CXX, "-E", "-P", "-x", "c++", "-nostdinc", "-nostdinc++", "-I", str(stubs), *flags,
                           str(HEADER)], capture_output=True, text=True)


def test_without_has_builtin_the_portable_splat(tmp_path):
    res = preprocess(tmp_path, "-U__has_builtin", "-Wno-builtin-macro-redefined")
    assert res.returncode == 0, res.stderr
    assert "error" not in res.stderr
    assert "v8f{s, s, s, s, s, s, s, s}" in res.stdout and "__builtin_shufflevector" not in res.stdout


def test_with_has_builtin_as_before(tmp_path):
    res = preprocess(tmp_path)
    assert res.returncode == 0, res.stderr
    probe = subprocess.run([CXX, "-E", "-P", "-x", "c++", "-"], input="#if defined(__has_builtin)\n#if "
                           "__has_builtin(__builtin_shufflevector)\nYES\n#endif\n#endif\n", capture_output=True,
                           text=True)
    expected = "__builtin_shufflevector(v, v" if "YES" in probe.stdout else "v8f{s, s, s, s, s, s, s, s}"
    assert expected in res.stdout

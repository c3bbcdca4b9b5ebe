"""Install honesty: ninja comes with recapfast, every install hint works from a clone and from an installed
package, `recapfast doctor` says when the slow backend runs and why, the first compile says what it costs."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from screen_helpers import env

ROOT = Path(__file__).resolve().parents[1]


def test_ninja_is_a_runtime_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"ninja\b", d) for d in deps), deps


def test_install_hints_name_installable_packages():
    """`pip install 'recapfast[plot]'` fails from a clone (no index serves recapfast): hints name plain packages
    (or `'.[extra]'` explicitly from a clone's root)."""
    bad = []
    for path in sorted((ROOT / "recapfast").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install[^\n]*recapfast\[", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_doctor_says_when_the_slow_backend_is_active_and_why():
    res = subprocess.run([sys.executable, "-m", "recapfast", "doctor", "--no-build"], capture_output=True, text=True,
                         timeout=120, env=env(RECAPFAST_BACKEND="torch"))
    assert res.returncode == 0, res.stderr
    speed = [line for line in res.stdout.splitlines() if line.startswith("speed")]
    assert len(speed) == 1, res.stdout
    assert "SLOW" in speed[0] and "2.4x" in speed[0] and "RECAPFAST_BACKEND=torch" in speed[0]
    assert "fix: unset RECAPFAST_BACKEND" in speed[0]


def test_doctor_speed_names_the_missing_tool():
    from recapfast.ops import _speed

    base = {"requested_backend": "auto", "ninja": False, "compiler": "g++ 12"}
    assert "fix: pip install ninja" in _speed("torch", "extension unavailable: ninja is not installed", base)
    assert "install a C++ compiler" in _speed("torch", "x", {**base, "ninja": True, "compiler": None})
    assert _speed("ext", "loaded", base).startswith("fast")


def test_first_compile_line_states_its_measured_cost_and_counts_objects(tmp_path):
    from recapfast.ops import _build

    assert "70-221 s measured" in _build.FIRST_BUILD_MEASURED and "2-core" in _build.FIRST_BUILD_MEASURED
    since = __import__("time").time() - 1
    for name in ("a.o", "b.o", "build.ninja"):
        (tmp_path / name).write_text("x")
    assert _build.compiled_objects(tmp_path, since) == 2
    assert _build.compiled_objects(tmp_path / "missing", since) == 0


def test_doctor_without_building_says_whether_a_build_is_cached(tmp_path):
    res = subprocess.run([sys.executable, "-m", "recapfast", "doctor", "--no-build"], capture_output=True, text=True,
                         timeout=120, env=env(RECAPFAST_BACKEND="auto", TORCH_EXTENSIONS_DIR=str(tmp_path)))
    assert res.returncode == 0, res.stderr
    speed = [line for line in res.stdout.splitlines() if line.startswith("speed")]
    assert speed and "no cached build; the first use compiles one" in speed[0] and "measured" in speed[0]
    assert not any(tmp_path.iterdir()), "--no-build compiles nothing"

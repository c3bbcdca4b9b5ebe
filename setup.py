"""Ship the C++/CUDA sources inside the package: csrc/ is copied to recapfast/_csrc at build time.

The extension is compiled just in time on first use (recapfast/ops/_build.py), so a wheel needs the
sources, not binaries. All other metadata lives in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCE_SUFFIXES = {".cpp", ".cu", ".cuh", ".h", ".hpp"}


class BuildPyWithCsrc(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "recapfast" / "_csrc"
        if dest.exists():
            shutil.rmtree(dest)
        for src in sorted((ROOT / "csrc").rglob("*")):
            if src.is_file() and src.suffix in SOURCE_SUFFIXES:
                target = dest / src.relative_to(ROOT / "csrc")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


setup(cmdclass={"build_py": BuildPyWithCsrc})

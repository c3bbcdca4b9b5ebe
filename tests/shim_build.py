"""Building and loading the host shim test extension (csrc/host_shim): the framework-free CUDA kernels of
csrc/cuda compiled unchanged by g++ and run on the CPU. Shared by tests/test_kernels_host.py and
tests/test_fastpath_kernels_host.py; cached under TORCH_EXTENSIONS_DIR like the main extension.
"""
from __future__ import annotations

import functools
import hashlib

import torch

from recapfast.ops import _build

# -ffp-contract=off: no fused multiply-add (the kernels round like the GPU); -fsanitize=alignment: a
# misaligned uchar4/float4 access, which a GPU faults on and an x86 CPU silently allows, is reported.
SHIM_CFLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-fno-strict-aliasing", "-fsanitize=alignment"]
SHIM_LDFLAGS = ["-fsanitize=alignment"]
# The deliberately broken build: only the fast-path ops, an off-by-one index planted (csrc/cuda/launch.cuh),
# registered under their own namespace so both builds load into one process.
BROKEN_NAMESPACE = "recapfast_host_shim_broken"
BROKEN_CFLAGS = ["-DRECAPFAST_PLANT_INDEX_BUG=1", f"-DRECAPFAST_SHIM_NAMESPACE={BROKEN_NAMESPACE}"]


def shim_sources():
    src = _build.source_dir()
    files = [p for p in sorted((src / "host_shim").iterdir()) if p.suffix in (".h", ".cpp")]
    files += sorted((src / "cuda").glob("*.cuh")) + sorted((src / "cuda").glob("*_glue.h"))
    return src, files + [src / "laplace_conv_common.h"]


def shim_build_name(broken: bool = False) -> str:
    src, files = shim_sources()
    flags = SHIM_CFLAGS + (BROKEN_CFLAGS if broken else [])
    h = hashlib.sha256(f"{_build.toolchain_key(False)};shim={flags}{SHIM_LDFLAGS}".encode())
    for path in files:
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"recapfast_host_shim_{'broken_' if broken else ''}{h.hexdigest()[:16]}"


@functools.lru_cache(maxsize=None)
def load_shim(broken: bool = False):
    """The shim's ops (torch.ops.recapfast_host_shim, or the broken build's namespace), built once and cached;
    loaded once per process (a second library registering the same namespace would abort it)."""
    from torch.utils import cpp_extension

    src, _ = shim_sources()
    name = shim_build_name(broken)
    build_dir = _build.cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{name}.so"
    if library.is_file() and not (build_dir / "lock").exists():
        torch.ops.load_library(str(library))
    else:
        sources = ["fastpath_host.cpp"] if broken else ["host_kernels.cpp", "fastpath_host.cpp"]
        cpp_extension.load(name=name, sources=[str(src / "host_shim" / s) for s in sources],
                           extra_cflags=SHIM_CFLAGS + (BROKEN_CFLAGS if broken else []),
                           extra_ldflags=list(SHIM_LDFLAGS),   # a copy: torch appends to it (and the hash reads it)
                           extra_include_paths=[str(src / "host_shim"), str(src)], build_directory=str(build_dir),
                           is_python_module=False, verbose=False)
    return getattr(torch.ops, BROKEN_NAMESPACE if broken else "recapfast_host_shim")

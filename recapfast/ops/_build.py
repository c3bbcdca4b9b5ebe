"""Finding, building (JIT, cached) and loading the recapfast C++/CUDA extension.

The ladder: a build already in the cache -> compile now with ninja (once, one line of feedback on
stderr) -> give up and record why (the caller falls back to the PyTorch reference or raises).

Environment:
  TORCH_EXTENSIONS_DIR   cache root (default ~/.cache/torch_extensions); builds go to <root>/recapfast/<name>
  MAX_JOBS               parallel compile jobs (default 2 here)
  TORCH_CUDA_ARCH_LIST   CUDA archs; set from the visible GPUs when unset
  RECAPFAST_CSRC_DIR     use these C++ sources instead of the shipped ones (development, tests)
  RECAPFAST_LOCK_TIMEOUT minutes after which a build lock whose owner cannot be checked counts as stale (default 15)
  RECAPFAST_BUILD_VERBOSE=1  show the compiler output

The build name hashes every source file, the torch version, the Python version and whether CUDA
is compiled in, so any change rebuilds into a fresh directory and stale builds are never loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import torch

_PKG_DIR = Path(__file__).resolve().parent.parent          # .../recapfast
_SOURCE_SUFFIXES = (".cpp", ".cu", ".cuh", ".h", ".hpp")
_CFLAGS = ["-O3", "-std=c++17"]
_CUDA_CFLAGS = ["-O3"]  # no --use_fast_math: perturb must round exactly like the reference
_OWNER_FILE = "recapfast-build-owner"


@dataclasses.dataclass
class BuildState:
    """What this process knows about the extension; one instance, filled on first use."""
    attempted: bool = False
    loaded: bool = False
    with_cuda: bool = False
    name: str = ""
    build_dir: str = ""
    library: str = ""
    source_dir: str = ""
    compiled_now: bool = False
    seconds: float = 0.0
    error: str = ""            # one-line reason when not loaded
    log: str = ""              # full build log when the build failed
    log_path: str = ""
    fallback_reported: bool = False
    line_open: bool = False    # the "compiling ..." line on stderr awaits its end (after a failed build)
    registered: bool = False   # fake kernels / autograd registered (once per process)


STATE = BuildState()


def source_dir() -> Path:
    """The C++ sources: RECAPFAST_CSRC_DIR, else those shipped in the wheel, else the checkout's csrc/."""
    override = os.environ.get("RECAPFAST_CSRC_DIR")
    if override:
        return Path(override).expanduser().resolve()
    shipped = _PKG_DIR / "_csrc"
    if (shipped / "recapfast.cpp").is_file():
        return shipped
    return _PKG_DIR.parent / "csrc"


def cuda_wanted() -> bool:
    """Compile CUDA kernels only where torch has CUDA, a GPU is visible and the toolkit exists."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    from torch.utils.cpp_extension import CUDA_HOME
    return CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()


def cache_root() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(Path.home(), ".cache", "torch_extensions")
    return Path(root).expanduser() / "recapfast"


def _sources(src: Path, with_cuda: bool) -> list[Path]:
    files = [src / "recapfast.cpp", *sorted((src / "cpu").glob("*.cpp"))]
    if with_cuda:
        files += sorted((src / "cuda").glob("*.cu"))
    return files


def build_name(src: Path, with_cuda: bool) -> str:
    h = hashlib.sha256()
    h.update(f"torch={torch.__version__};cuda={torch.version.cuda if with_cuda else None};"
             f"py={sys.version_info[:2]};flags={_CFLAGS}{_CUDA_CFLAGS}".encode())
    for path in sorted(p for p in src.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"recapfast_ext_{'cuda' if with_cuda else 'cpu'}_{h.hexdigest()[:16]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_lock(build_dir: Path) -> str | None:
    """Remove torch's build `lock` if its builder is gone; return a message when one was removed.

    torch.utils.cpp_extension waits forever on a lock left by a killed build. We write the builder's
    host and pid next to it: a lock whose owner died on this host is stale at once, one whose owner
    lives is never stale, and one we cannot check (no owner file, another host) is stale after
    RECAPFAST_LOCK_TIMEOUT minutes.
    """
    lock = build_dir / "lock"
    if not lock.exists():
        return None
    owner = build_dir / _OWNER_FILE
    reason = None
    try:
        host, pid = owner.read_text().split()
        if host == socket.gethostname():
            if _pid_alive(int(pid)):
                return None  # a live build, however long it takes (CUDA builds can take many minutes)
            reason = f"its builder (pid {pid}) is gone"
    except (OSError, ValueError):
        pass
    if reason is None:
        try:
            age_min = (time.time() - lock.stat().st_mtime) / 60
        except OSError:
            return None
        timeout = float(os.environ.get("RECAPFAST_LOCK_TIMEOUT", "15"))
        if age_min < timeout:
            return None
        reason = f"it is {age_min:.0f} min old (RECAPFAST_LOCK_TIMEOUT={timeout:g})"
    try:
        lock.unlink()
    except FileNotFoundError:
        return None
    return f"recapfast: removed stale build lock {lock} ({reason})"


def _toolchain_problem(with_cuda: bool) -> str | None:
    from torch.utils.cpp_extension import is_ninja_available
    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0]) is None:
        return f"no C++ compiler found ({cxx!r}; set CXX or install g++)"
    return None


def _cuda_arch_list() -> str:
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def load() -> BuildState:
    """Build (if needed) and load the extension once per process; never raises, see STATE.error."""
    state = STATE
    if state.attempted:
        return state
    state.attempted = True
    src = source_dir()
    state.source_dir = str(src)
    try:
        state.with_cuda = cuda_wanted()
        if not (src / "recapfast.cpp").is_file():
            raise FileNotFoundError(f"C++ sources not found in {src}")
        state.name = build_name(src, state.with_cuda)
        build_dir = cache_root() / state.name
        build_dir.mkdir(parents=True, exist_ok=True)
        state.build_dir = str(build_dir)
        library = build_dir / f"{state.name}.so"
        state.library = str(library)
        if library.is_file() and not (build_dir / "lock").exists():
            torch.ops.load_library(str(library))      # cached build: no compiler, no ninja
        else:
            _compile(state, src, build_dir)
        state.loaded = True
    except Exception as exc:  # noqa: BLE001 - any failure means "no extension"; the reason is kept and reported
        state.loaded = False
        state.log = f"{type(exc).__name__}: {exc}"
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        state.error = first if len(first) <= 200 else first[:197] + "..."
        if state.build_dir:
            log_path = Path(state.build_dir) / "build.log"
            try:
                log_path.write_text(state.log)
                state.log_path = str(log_path)
            except OSError:
                pass
    return state


def _compile(state: BuildState, src: Path, build_dir: Path) -> None:
    from torch.utils import cpp_extension

    problem = _toolchain_problem(state.with_cuda)
    if problem:
        raise RuntimeError(problem)
    stale = clear_stale_lock(build_dir)
    if stale:
        print(stale, file=sys.stderr, flush=True)
    if not (build_dir / "lock").exists():  # we are about to become the builder: record who holds the lock
        (build_dir / _OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    env_saved = {k: os.environ.get(k) for k in ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST")}
    os.environ.setdefault("MAX_JOBS", "2")
    if state.with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch_list()
    verbose = os.environ.get("RECAPFAST_BUILD_VERBOSE", "") not in ("", "0")
    print("recapfast: compiling C++ extension (first use) ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    ok = False
    # torch waits without limit for another builder's lock; a watchdog removes it if that builder dies,
    # after which torch's load fails (nothing was built) instead of hanging.
    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(5.0):
            message = clear_stale_lock(build_dir)
            if message:
                print(f"\n{message}", file=sys.stderr, flush=True)

    threading.Thread(target=watchdog, name="recapfast-lock-watchdog", daemon=True).start()
    try:
        cpp_extension.load(
            name=state.name,
            sources=[str(p) for p in _sources(src, state.with_cuda)],
            extra_cflags=_CFLAGS,
            extra_cuda_cflags=_CUDA_CFLAGS,
            extra_include_paths=[str(src)],
            build_directory=str(build_dir),
            with_cuda=state.with_cuda,
            is_python_module=False,
            verbose=verbose,
        )
        ok = True
    finally:
        done.set()
        state.seconds = time.perf_counter() - start
        state.compiled_now = True
        # On failure the line stays open so that the caller's verdict (fallback or error) ends it: one line.
        print(f" {'done' if ok else 'failed'} in {state.seconds:.1f}s", end="" if not ok else "\n",
              file=sys.stderr, flush=True)
        state.line_open = not ok
        for key, value in env_saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def say(message: str) -> None:
    """One line on stderr prefixed 'recapfast:', or the end of the open "compiling ..." line."""
    if STATE.line_open:
        STATE.line_open = False
        print(f"; {message}" if message else "", file=sys.stderr, flush=True)
    elif message:
        print(f"recapfast: {message}", file=sys.stderr, flush=True)


def platform_summary() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}

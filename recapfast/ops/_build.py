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

The build name hashes every source file, the torch version, the Python version, whether CUDA is
compiled in, the compile flags, the C++ compiler (path and version) and, for CUDA builds, nvcc
(path and version) and the GPU architectures (TORCH_CUDA_ARCH_LIST, else the visible GPUs'
capabilities). So any change rebuilds into a fresh directory, and a cache shared between machines
never hands one a library built for another GPU or toolchain.

Loading is serialized by a process-wide lock (two threads calling the first op: one build, one
registration). After loading, a smoke call of every op on every device it serves (``_smoke.py``)
must give the reference's result; if it fails (e.g. no kernel image for this GPU) the extension
counts as unavailable, so ``auto`` falls back with one line saying why.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from recapfast.io import atomic

_PKG_DIR = Path(__file__).resolve().parent.parent          # .../recapfast
_SOURCE_SUFFIXES = (".cpp", ".cu", ".cuh", ".h", ".hpp")
_CFLAGS = ["-O3", "-std=c++17"]
_CUDA_CFLAGS = ["-O3"]  # no --use_fast_math: perturb must round exactly like the reference
_OWNER_FILE = "recapfast-build-owner"
# What the first build costs, measured on a shared 2-core x86_64 cloud machine (MAX_JOBS=2, g++ 12): 69.7 s at
# 1-min load 2.6-4, 194.7 s and 221.3 s at load 5-6 (fresh clones, `recapfast demo` / `doctor`), 204.7 s in
# issue 22's trial.
FIRST_BUILD_MEASURED = "1-4 min on a 2-core x86_64 machine, 70-221 s measured, longer under load"
PROGRESS_EVERY = 20.0     # seconds between progress reports on the compiling line


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
    building: bool = False     # a compile is running now (its line on stderr is open; others wait to print)
    registered: bool = False   # fake kernels / autograd registered (once per process)


STATE = BuildState()
# Held while the extension is found, built, loaded, smoke-tested and registered (ops._ensure_extension).
LOCK = threading.RLock()


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


_TOOL_IDS: dict[str, str] = {}


def tool_identity(command: str) -> str:
    """'<resolved path> | <first line of --version>' of a compiler (cached per process); 'missing: ...' if absent."""
    if command not in _TOOL_IDS:
        path = shutil.which(command)
        if path is None:
            _TOOL_IDS[command] = f"missing: {command}"
        else:
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                out = f"unknown version ({type(exc).__name__})"
            lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
            # nvcc's last line names the release and build; a C++ compiler's first line its version.
            version = (lines[-1] if Path(path).name.startswith("nvcc") else lines[0]) if lines else "unknown version"
            _TOOL_IDS[command] = f"{os.path.realpath(path)} | {version}"
    return _TOOL_IDS[command]


def cuda_arch_list() -> str:
    """The CUDA architectures a build targets: TORCH_CUDA_ARCH_LIST, else the visible GPUs' capabilities."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or _cuda_arch_list()


def _nvcc() -> str:
    from torch.utils.cpp_extension import CUDA_HOME
    return str(Path(CUDA_HOME, "bin", "nvcc")) if CUDA_HOME else "nvcc"


def toolchain_key(with_cuda: bool) -> str:
    """Everything besides the sources that decides what a build produces (part of the build name)."""
    parts = [f"torch={torch.__version__}", f"py={sys.version_info[:2]}", f"cflags={_CFLAGS}",
             f"cxx={tool_identity(os.environ.get('CXX', 'c++').split()[0])}"]
    if with_cuda:
        parts += [f"cuda={torch.version.cuda}", f"cuda_cflags={_CUDA_CFLAGS}", f"nvcc={tool_identity(_nvcc())}",
                  f"arch={cuda_arch_list()}"]
    return ";".join(parts)


def build_name(src: Path, with_cuda: bool) -> str:
    h = hashlib.sha256()
    h.update(toolchain_key(with_cuda).encode() + b"\0")
    for path in sorted(p for p in src.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
        rel = path.relative_to(src)
        if rel.parts[0] == "host_shim":   # test-only sources, never part of this build
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
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
    """Build (if needed), load and smoke-test the extension once per process; never raises, see STATE.error.

    Thread-safe: a second thread waits for the first one's attempt and gets its outcome.
    """
    with LOCK:
        state = STATE
        if not state.attempted:
            state.attempted = True
            _load(state)
        return state


def _load(state: BuildState) -> None:
    from . import _smoke

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
        # A library that loads can still fail at its first launch (e.g. built for another GPU): find out
        # now, while falling back is still possible, rather than in the middle of a user's sweep.
        _smoke.check(state.with_cuda)
        state.loaded = True
        say("")   # ends the "compiling ... done" line of a build made now
    except Exception as exc:  # noqa: BLE001 - any failure means "no extension"; the reason is kept and reported
        state.loaded = False
        state.log = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _smoke.SmokeTestFailed) and exc.__cause__ is not None:
            import traceback
            state.log += "\n" + "".join(traceback.format_exception(exc.__cause__))
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        state.error = first if len(first) <= 200 else first[:197] + "..."
        if state.build_dir:
            log_path = Path(state.build_dir) / "build.log"
            try:
                atomic.write_text(log_path, state.log, durable=False)
                state.log_path = str(log_path)
            except (OSError, ValueError):     # ValueError: atomic's DiskError/OutputError (a UserError)
                pass


def _compile(state: BuildState, src: Path, build_dir: Path) -> None:
    from torch.utils import cpp_extension

    problem = _toolchain_problem(state.with_cuda)
    if problem:
        raise RuntimeError(problem)
    stale = clear_stale_lock(build_dir)
    if stale:
        print(stale, file=sys.stderr, flush=True)
    if not (build_dir / "lock").exists():  # we are about to become the builder: record who holds the lock
        atomic.write_text(build_dir / _OWNER_FILE, f"{socket.gethostname()} {os.getpid()}\n", durable=False)
    env_saved = {k: os.environ.get(k) for k in ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST")}
    os.environ.setdefault("MAX_JOBS", "2")
    if state.with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()   # what the build name was keyed on
    verbose = os.environ.get("RECAPFAST_BUILD_VERBOSE", "") not in ("", "0")
    sources = _sources(src, state.with_cuda)
    state.building = True
    print(f"recapfast: compiling C++ extension (first use, then cached; {FIRST_BUILD_MEASURED}) ...", end="",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    wall_start = time.time()
    ok = False
    # torch waits without limit for another builder's lock; a watchdog removes it if that builder dies,
    # after which torch's load fails (nothing was built) instead of hanging.  It also reports progress on the
    # open line: the sources compiled so far (their object files) and the time, every PROGRESS_EVERY seconds.
    done = threading.Event()

    def watchdog() -> None:
        next_report = PROGRESS_EVERY
        while not done.wait(min(5.0, PROGRESS_EVERY)):
            message = clear_stale_lock(build_dir)
            if message:
                print(f"\n{message}", file=sys.stderr, flush=True)
            elapsed = time.perf_counter() - start
            if elapsed >= next_report:
                next_report += PROGRESS_EVERY
                compiled = compiled_objects(build_dir, wall_start)
                print(f" {min(compiled, len(sources))}/{len(sources)} sources compiled, {elapsed:.0f}s ...", end="",
                      file=sys.stderr, flush=True)

    threading.Thread(target=watchdog, name="recapfast-lock-watchdog", daemon=True).start()
    try:
        cpp_extension.load(
            name=state.name,
            sources=[str(p) for p in sources],
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
        # The line stays open: the smoke test's success ends it, a failure's verdict (fallback or error)
        # is appended to it, so a first use prints one line.
        print(f" {'done' if ok else 'failed'} in {state.seconds:.1f}s", end="", file=sys.stderr, flush=True)
        state.line_open = True
        state.building = False
        for key, value in env_saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def compiled_objects(build_dir: Path, since: float) -> int:
    """How many object files the build running since ``since`` (epoch seconds) has written so far."""
    try:
        return sum(1 for p in Path(build_dir).iterdir() if p.suffix == ".o" and p.stat().st_mtime >= since)
    except OSError:
        return 0


def say(message: str) -> None:
    """One line on stderr prefixed 'recapfast:', or the end of the open "compiling ..." line."""
    if STATE.line_open:
        STATE.line_open = False
        print(f"; {message}" if message else "", file=sys.stderr, flush=True)
    elif message:
        print(f"recapfast: {message}", file=sys.stderr, flush=True)


def platform_summary() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}

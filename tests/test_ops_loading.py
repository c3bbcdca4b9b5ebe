"""Loading the extension: the build cache key, the load/register lock, and the first-launch smoke test.

No GPU needed: GPU architectures, compilers and failed launches are simulated (monkeypatching), the
library itself is the real one built once per session (the `ext` fixture).
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from recapfast import ops
from recapfast.ops import _build, _register, _smoke

from conftest import use_backend


@pytest.fixture
def src_copy(tmp_path):
    src = tmp_path / "csrc"
    shutil.copytree(_build.source_dir(), src)
    return src


def fake_tool(path: Path, version: str) -> Path:
    """An executable that prints a version line, as `c++ --version` / `nvcc --version` do."""
    path.write_text(f"#!/bin/sh\necho '{version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# ------------------------------------------------------------------------------------------ cache key

def test_build_name_tracks_gpu_architectures(src_copy, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(_build, "_cuda_arch_list", lambda: "8.0")
    cpu, a100 = _build.build_name(src_copy, False), _build.build_name(src_copy, True)
    monkeypatch.setattr(_build, "_cuda_arch_list", lambda: "9.0")        # the visible GPU is now a Hopper
    h100 = _build.build_name(src_copy, True)
    assert a100 != h100 and _build.build_name(src_copy, False) == cpu
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")                    # an explicit list wins over the GPUs
    assert _build.build_name(src_copy, True) == a100
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert _build.build_name(src_copy, True) not in (a100, h100)
    assert _build.build_name(src_copy, False) == cpu


def test_build_name_tracks_compilers_and_flags(src_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(_build, "_cuda_arch_list", lambda: "9.0")
    cpu, cuda = _build.build_name(src_copy, False), _build.build_name(src_copy, True)
    monkeypatch.setenv("CXX", str(fake_tool(tmp_path / "c++-a", "g++ (fake) 12.2.0")))
    cxx_a = _build.build_name(src_copy, False)
    monkeypatch.setenv("CXX", str(fake_tool(tmp_path / "c++-b", "g++ (fake) 13.1.0")))
    assert len({cpu, cxx_a, _build.build_name(src_copy, False)}) == 3
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(_build, "_nvcc", lambda: str(fake_tool(tmp_path / "nvcc", "Cuda compilation tools, 12.8")))
    assert _build.build_name(src_copy, True) != cuda and _build.build_name(src_copy, False) == cpu
    monkeypatch.setattr(_build, "_CFLAGS", _build._CFLAGS + ["-march=native"])
    assert _build.build_name(src_copy, False) != cpu
    assert "-march=native" in _build.toolchain_key(False)


def test_tool_identity_names_path_and_version(tmp_path):
    tool = fake_tool(tmp_path / "cc", "cc (fake) 1.2.3")
    assert _build.tool_identity(str(tool)) == f"{os.path.realpath(tool)} | cc (fake) 1.2.3"
    assert _build.tool_identity(str(tmp_path / "absent")).startswith("missing:")


def test_build_name_ignores_the_test_only_host_shim(src_copy):
    before = _build.build_name(src_copy, False)
    with open(src_copy / "host_shim" / "cuda_runtime.h", "a") as fh:
        fh.write("\n// changed\n")
    assert _build.build_name(src_copy, False) == before
    with open(src_copy / "cuda" / "perturb_kernels.cuh", "a") as fh:
        fh.write("\n// changed\n")
    assert _build.build_name(src_copy, False) != before


def test_cuda_build_targets_exactly_the_keyed_architectures(tmp_path, monkeypatch):
    """What the name was keyed on is what the compiler gets (TORCH_CUDA_ARCH_LIST during the build only)."""
    from torch.utils import cpp_extension

    seen = {}

    def fake_load(**kwargs):
        seen.update(arch=os.environ.get("TORCH_CUDA_ARCH_LIST"), with_cuda=kwargs["with_cuda"],
                    sources=[Path(s).name for s in kwargs["sources"]])

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(_build, "_cuda_arch_list", lambda: "9.0")
    state = _build.BuildState(with_cuda=True)
    build_dir = tmp_path / "b"
    build_dir.mkdir()
    _build._compile(state, _build.source_dir(), build_dir)
    _build.say("")
    assert seen["arch"] == "9.0" and seen["with_cuda"] and "perturb.cu" in seen["sources"]
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ


# ------------------------------------------------------------------------------------------ lock

@pytest.fixture
def fresh_state(ext, monkeypatch):
    """A loader that has tried nothing yet, over the session's build cache (the real library is there)."""
    monkeypatch.setattr(_build, "STATE", _build.BuildState())
    monkeypatch.setattr(_register, "register", lambda: None)   # done for real once in this process already
    with use_backend("auto"):
        yield _build


def test_two_threads_first_call_build_once_register_once(ext, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(_build, "STATE", _build.BuildState())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))   # empty cache: a build is needed
    builds, registrations = [], []

    def slow_build(state, src, build_dir):    # the library is already loaded in this process
        builds.append(threading.get_ident())
        time.sleep(0.5)

    def slow_register():                       # the real registration already happened in this process
        registrations.append(threading.get_ident())
        time.sleep(0.3)

    monkeypatch.setattr(_build, "_compile", slow_build)
    monkeypatch.setattr(_register, "register", slow_register)
    start = threading.Barrier(3)
    results, errors = [], []
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    grad = torch.randn(2, 3, 5, 5)

    def first_call():
        start.wait()
        try:
            results.append((ops.active_backend(), ops.perturb(x, grad, [1.0, 2.0], [1.0, -1.0])))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with use_backend("auto"):
        threads = [threading.Thread(target=first_call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert len(builds) == 1 and len(registrations) == 1
    ref = ops.perturb_reference(x, grad, [1.0, 2.0], [1.0, -1.0])
    assert [r[0] for r in results] == ["ext"] * 3 and all(torch.equal(r[1], ref) for r in results)
    assert "unavailable" not in capfd.readouterr().err and _build.STATE.error == ""


# ------------------------------------------------------------------------------------------ first launch

class FailingOps:
    """torch.ops.recapfast with one op failing like a library built for another GPU, or giving garbage."""

    def __init__(self, op: str, how: str):
        self.op, self.how = op, how

    def __getattr__(self, name):
        real = getattr(torch.ops.recapfast, name)
        if name != self.op:
            return real
        if self.how == "raise":
            def fail(*args, **kwargs):
                raise RuntimeError("CUDA error: no kernel image is available for execution on the device\n"
                                   "CUDA kernel errors might be asynchronously reported")
            return fail
        def garbage(*args, **kwargs):
            out = real(*args, **kwargs)
            return tuple(map(torch.zeros_like, out)) if isinstance(out, tuple) else torch.zeros_like(out)
        return garbage


def recapfast_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "recapfast" in ln]


@pytest.mark.parametrize("op, how, reason", [
    ("perturb", "raise", "first launch of perturb on cpu failed: CUDA error: no kernel image is available"),
    ("laplace_conv", "raise", "first launch of laplace_conv on cpu failed: CUDA error: no kernel image"),
    ("perturb", "garbage", "perturb on cpu gave wrong results"),
    ("laplace_conv_backward", "garbage", "laplace_conv_backward on cpu gave wrong results"),
    ("relu_pool_backward", "garbage", "relu_pool_backward on cpu gave wrong results"),
    ("adv_metrics", "garbage", "adv_metrics on cpu gave wrong results"),
    ("adv_metrics", "raise", "first launch of relu_pool/stem_pool/adv_metrics on cpu failed: CUDA error"),
])
def test_failed_first_launch_falls_back_with_one_line_under_auto(fresh_state, monkeypatch, capfd, op, how, reason):
    monkeypatch.setattr(_smoke, "_ops", lambda: FailingOps(op, how))
    assert ops.active_backend() == "torch" and ops.active_backend() == "torch"
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    grad = torch.randn(2, 3, 4, 4)
    assert torch.equal(ops.perturb(x, grad, [1.0], [1.0]), ops.perturb_reference(x, grad, [1.0], [1.0]))
    lines = recapfast_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert reason in lines[0] and "PyTorch reference" in lines[0]
    assert not _build.STATE.loaded and reason in _build.STATE.error
    if how == "raise":
        assert "Traceback" in Path(_build.STATE.log_path).read_text()   # the full story is in the build log


def test_failed_first_launch_raises_under_ext(fresh_state, monkeypatch):
    monkeypatch.setattr(_smoke, "_ops", lambda: FailingOps("perturb", "raise"))
    with use_backend("ext"), pytest.raises(RuntimeError, match="first launch of perturb on cpu failed"):
        ops.active_backend()


def test_smoke_test_runs_inside_no_grad_and_inference_mode(fresh_state):
    with torch.no_grad(), torch.inference_mode():
        assert ops.active_backend() == "ext"


def test_build_then_failed_first_launch_is_one_line(ext, tmp_path, monkeypatch, capfd):
    """A build made now ends its 'compiling ...' line only when the first launch worked; else the verdict
    is appended to it: one line either way."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(_build, "STATE", _build.BuildState())
    monkeypatch.setattr(_register, "register", lambda: None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: None)   # "builds" the library already loaded
    monkeypatch.setattr(_smoke, "_ops", lambda: FailingOps("perturb", "raise"))
    with use_backend("auto"):
        assert ops.active_backend() == "torch"
    lines = recapfast_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert "compiling" in lines[0] and "done in" in lines[0] and "first launch of perturb" in lines[0]

    monkeypatch.setattr(_build, "STATE", _build.BuildState())
    monkeypatch.setattr(_smoke, "_ops", lambda: torch.ops.recapfast)
    with use_backend("auto"):
        assert ops.active_backend() == "ext"
    err = capfd.readouterr().err
    assert len(recapfast_lines(err)) == 1 and "done in" in err and err.endswith("\n")


def test_first_compile_reports_progress_on_its_one_line(ext, tmp_path, monkeypatch, capfd):
    """A long first build says what it costs on this machine class and how far it is, on the same one line."""
    from torch.utils import cpp_extension

    def slow_build(**kwargs):
        for name in ("recapfast.o", "perturb.o"):
            Path(kwargs["build_directory"], name).write_text("x")
            time.sleep(0.35)

    monkeypatch.setattr(_build, "STATE", _build.BuildState())
    monkeypatch.setattr(_build, "PROGRESS_EVERY", 0.1)
    monkeypatch.setattr(_register, "register", lambda: None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp_extension, "load", slow_build)
    with use_backend("auto"):
        assert ops.active_backend() == "ext"
    lines = recapfast_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert _build.FIRST_BUILD_MEASURED in lines[0] and "done in" in lines[0]
    counts = re.findall(r" (\d+)/(\d+) sources compiled", lines[0])
    assert counts and counts[-1][0] == "2" and int(counts[-1][1]) >= 2, lines[0]

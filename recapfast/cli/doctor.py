"""`recapfast doctor`: versions, toolchain, and which op backend is in use and why."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from recapfast.cli._app import app


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    no_build: Annotated[bool, typer.Option("--no-build", help="Do not compile the extension to find out.")] = False,
) -> None:
    """Show torch/CUDA versions, compiler, ninja, nvcc, and the op backend in use (and why)."""
    from recapfast.ops import doctor_info

    info = doctor_info(build=not no_build)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    rows = [
        ("python", info["python"]),
        ("platform", info["platform"]),
        ("torch", info["torch"]),
        ("torch CUDA", info["torch_cuda"] or "none (CPU build)"),
        ("GPUs", ", ".join(info["gpus"]) or "none visible"),
        ("C++ compiler", info["compiler"] or "not found"),
        ("ninja", "yes" if info["ninja"] else "not found (pip install ninja)"),
        ("nvcc", info["nvcc"] or "not found"),
        ("C++ sources", info["sources"]),
        ("build cache", info["cache_dir"] + "  (TORCH_EXTENSIONS_DIR)"),
        ("MAX_JOBS", info["max_jobs"]),
        ("requested backend", info["requested_backend"] or "invalid"),
        ("active backend", info["active_backend"] or "none"),
        ("why", info["reason"]),
        ("speed", info.get("speed", "")),
    ]
    if info.get("build_dir"):
        rows.append(("build dir", info["build_dir"]))
    if info.get("build_log"):
        rows.append(("build log", info["build_log"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")

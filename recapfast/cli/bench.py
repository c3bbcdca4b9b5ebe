"""recapfast bench: the benchmark suite (`python -m bench`) from the command line.

The suite lives in the source checkout's ``bench/`` folder; it is not part of the wheel (its
peers, results and notes belong to the repository).  ``recapfast bench`` finds it next to an
editable install, or in the current folder when that is a clone (after ``pip install .``, run it
from the clone's root); anywhere else it stops with one line saying so (exit code 1).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from recapfast.errors import UserError
from ._app import app


def _is_suite(folder: Path) -> bool:
    main = folder / "bench" / "__main__.py"
    try:
        return main.is_file() and "recapfast" in main.read_text(errors="replace")[:4000]
    except OSError:
        return False


def _import_bench():
    """recapfast's bench/ package: beside the installed sources (editable install) or in the working folder."""
    import importlib

    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if _is_suite(root):
            break
    else:
        raise UserError("the benchmark suite is not installed with the package (it lives in the repository's "
                        "bench/ folder): run `recapfast bench` from the root of a clone of recapfast")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    suite = importlib.import_module("bench.__main__")
    if not hasattr(suite, "WORKLOADS") or not hasattr(suite, "main"):
        raise UserError(f"{root / 'bench'}: another package named `bench` shadows recapfast's benchmark suite")
    return suite


@app.command("bench")
def bench_command(
    quick: Annotated[bool, typer.Option("--quick", help="About 15-25 minutes on 2 CPU cores.")] = False,
    full: Annotated[bool, typer.Option("--full", help="More images, 512 px, more repetitions.")] = False,
    only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated workloads: eval-sweep, scaling, "
                                                "train-step, screen-probe, floor, data-pipeline, kernels.")] = None,
    contenders: Annotated[Optional[str], typer.Option("--contenders", help="Comma-separated contenders "
                          "(recapfast-ext, recapfast-torch, skilled, torchattacks, foolbox, art).")] = None,
    threads: Annotated[Optional[str], typer.Option("--threads", help="Comma-separated torch thread counts of the "
                       "eval sweep (default: 1 and the core count); the first one is used everywhere else.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", exists=True, dir_okay=False,
                                                  help="A .safetensors model (default: bundled baseline).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", file_okay=False, help="Results folder (default bench/results).")] = None,
) -> None:
    """Benchmark recapfast against a skilled 20-line PyTorch script, torchattacks, foolbox and ART."""
    if quick and full:
        raise typer.BadParameter("choose one of --quick and --full", param_hint="--quick")
    suite = _import_bench()
    only_list = suite.parse_list(only)
    bad = [w for w in only_list or [] if w not in suite.WORKLOADS]
    if bad:
        raise typer.BadParameter(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(suite.WORKLOADS)}",
                                 param_hint="--only")
    try:
        thread_counts = suite.parse_list(threads, int)
    except ValueError as err:
        raise typer.BadParameter(f"{threads!r}: give comma-separated positive integers", param_hint="--threads") from err
    try:
        _, path = suite.run_suite("quick" if quick else "full" if full else "default", only_list, thread_counts,
                                  str(model) if model else None, out, suite.parse_list(contenders))
    except ValueError as err:
        raise UserError(str(err)) from err
    typer.echo(path.with_suffix(".md").read_text(), nl=False)

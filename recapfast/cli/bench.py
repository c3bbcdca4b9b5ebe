"""recapfast bench: the benchmark suite (`python -m bench`) from the command line.

The suite lives in the source checkout's ``bench/`` folder; it is not part of the wheel (its
peers, results and notes belong to the repository).  ``recapfast bench`` finds it next to an
editable install, or in the current folder when that is a clone (after ``pip install .``, run it
from the clone's root), loads that folder as the package ``bench`` and calls its function API
(``bench.__main__.run``); anywhere else it stops with one line saying so (exit code 1).
"""
from __future__ import annotations

import importlib
import importlib.util
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
    """recapfast's bench/ package: beside the installed sources (editable install) or in the working folder.

    The folder is loaded as the package ``bench`` from its own path (``sys.path`` is left alone);
    a ``bench`` imported from anywhere else is refused as a shadow.
    """
    root = next((r for r in (Path(__file__).resolve().parents[2], Path.cwd()) if _is_suite(r)), None)
    if root is None:
        raise UserError("the benchmark suite is not installed with the package (it lives in the repository's "
                        "bench/ folder): run `recapfast bench` from the root of a clone of recapfast")
    folder = (root / "bench").resolve()
    package = sys.modules.get("bench")
    if package is None:
        spec = importlib.util.spec_from_file_location("bench", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules["bench"]
            raise
    suite = None
    if folder in (Path(p).resolve() for p in getattr(package, "__path__", ())):
        suite = importlib.import_module("bench.__main__")
    if not hasattr(suite, "WORKLOADS") or not hasattr(suite, "run"):
        where = getattr(package, "__file__", None) or "bench"
        raise UserError(f"{where}: another package named `bench` shadows recapfast's benchmark suite ({folder})")
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
    try:
        report = suite.run("quick" if quick else "full" if full else "default", only=only, threads=threads,
                           model=str(model) if model else None, out=out, contenders=contenders)
    except suite.OptionError as err:
        raise typer.BadParameter(err.message, param_hint=err.option) from err
    except ValueError as err:
        raise UserError(str(err)) from err
    typer.echo(report, nl=False)

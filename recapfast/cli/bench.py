"""recapfast bench: the benchmark suite (`python -m bench`) from the command line.

The suite lives in the source checkout's ``bench/`` folder (it is not part of the wheel).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from ._app import app


def _import_bench():
    try:
        import bench.__main__ as suite  # noqa: F401
        return suite
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        if not (root / "bench" / "__main__.py").is_file():
            raise UserError("the benchmark suite ships with the source checkout (bench/); run `recapfast bench` "
                            "from a clone of the repository") from None
        sys.path.insert(0, str(root))
        import bench.__main__ as suite
        return suite


@app.command("bench")
def bench_command(
    quick: Annotated[bool, typer.Option("--quick", help="A few minutes on 2 CPU cores.")] = False,
    full: Annotated[bool, typer.Option("--full", help="More images, 512 px, more repetitions.")] = False,
    only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated workloads: eval-sweep, scaling, "
                                                              "train-step, data-pipeline, kernels.")] = None,
    contenders: Annotated[Optional[str], typer.Option("--contenders", help="Comma-separated contenders "
                                                      "(recapfast-ext, recapfast-torch, torchattacks, foolbox, art).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Torch threads (default: all cores, "
                                                   "1 on an oversubscribed machine).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", exists=True, dir_okay=False,
                                                  help="A .safetensors model (default: bundled baseline).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", file_okay=False, help="Results folder (default bench/results).")] = None,
) -> None:
    """Benchmark recapfast against torchattacks, foolbox and ART; writes bench/results/<machine>.json and .md."""
    if quick and full:
        raise typer.BadParameter("choose one of --quick and --full", param_hint="--quick")
    suite = _import_bench()
    argv = ["--quick"] if quick else ["--full"] if full else []
    for flag, value in (("--only", only), ("--contenders", contenders), ("--threads", threads),
                        ("--model", model), ("--out", out)):
        if value is not None:
            argv += [flag, str(value)]
    only_list = [w.strip() for w in (only or "").split(",") if w.strip()]
    bad = [w for w in only_list if w not in suite.WORKLOADS]
    if bad:
        raise typer.BadParameter(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(suite.WORKLOADS)}",
                                 param_hint="--only")
    raise typer.Exit(suite.main(argv))

"""recapfast reproduce OUT: Experiments 1 and 2 of Zhao et al. 2018 (Tables 1-3) end to end, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import DeviceOpt, ForceOpt, QuietOpt, SeedOpt, app, resolve_device, stderr_console


@app.command("reproduce")
def reproduce_command(
    out: Annotated[Path, typer.Argument(help="Output folder: report.md, results.json, plots/, state.json "
                                             "(data and checkpoints under OUT/work/, git-ignored).")],
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated patch sizes.")] = "64,128,256,512",
    count: Annotated[int, typer.Option("--count", min=1, help="Originals and recaptures per size (each).")] = 10_000,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Training iterations per model.")] = 100_000,
    lr: Annotated[float, typer.Option("--lr", help="Initial Adam learning rate.")] = 1e-4,
    lr_step: Annotated[Optional[int], typer.Option("--lr-step", min=1, help="Decay the lr x0.9 every N "
                                                   "iterations (default iters/10).")] = None,
    penalty: Annotated[float, typer.Option("--penalty", help="lambda: weight of ||grad_x J||_2 (robust).")] = 10.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Mini-batch size.")] = 64,
    val_every: Annotated[Optional[int], typer.Option("--val-every", min=1, help="Validate and checkpoint every N "
                                                     "iterations (default iters/10).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", exists=True, file_okay=False,
                                                 help="Use DIR/<size>/{original,recaptured} instead of synthesizing.")] = None,
    notes: Annotated[Optional[Path], typer.Option("--notes", exists=True, dir_okay=False,
                                                  help="Markdown file shown in the report under 'Why these settings'.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Synthesis processes (default min(2, cores)).")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthesize (or read) data per size, split 40/10/50, train Yang's baseline and the robust model,
    evaluate clean/FGSM/LLCM at eps 1..5, and write the report; rerun the same command to resume."""
    from ..lock import lock_outputs
    from ..reproduce import ReproduceConfig, reproduce
    from ..validate import number, output_dir

    number(lr, "--lr", 0.0, lo_open=True)
    number(penalty, "--penalty", 0.0)
    output_dir(out, "OUT", force=True)         # created if missing; its parent must exist (reproduce resumes OUT)

    try:
        size_values = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError as err:
        raise typer.BadParameter(f"{sizes!r} is not a comma-separated list of integers", param_hint="--sizes") from err
    config = ReproduceConfig(sizes=size_values, count=count, iters=iters, lr=lr, lr_step=lr_step, penalty=penalty,
                             batch_size=batch_size, val_every=val_every, seed=seed,
                             data=str(data) if data is not None else None)
    console = stderr_console(quiet)
    log = (lambda msg: console.print(msg, markup=False, highlight=False))
    with lock_outputs(out):
        result = reproduce(out, config, device=resolve_device(device), force=force, workers=workers, log=log,
                           notes=notes.read_text() if notes is not None else None)
    typer.echo(f"{result.report}")

"""recapfast reproduce OUT: Experiments 1 and 2 of Zhao et al. 2018 (Tables 1-3) end to end, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import MAX_BATCH, MAX_WORKERS, DeviceOpt, ForceOpt, QuietOpt, SeedOpt, app, resolve_device, stderr_console

# --protocol presets; any option given explicitly overrides its preset value.
PROTOCOLS = {
    # Zhao et al. 2018, section 4: 10000 + 10000 images per size, 100k iterations, lr 1e-4 x0.9 every 10k.
    "full": {"sizes": "64,128,256,512", "count": "10000", "iters": 100_000, "lr": 1e-4, "train_tile": None},
    # Sized for 2 CPU cores (the committed run: about 2 hours, a third of it synthesis): both models trained at every size, on the 64 px tiles of the
    # train/val images (the network ends in global average pooling), 1200 iterations at lr 1e-3; at least 300 + 300
    # test images per size, evaluated whole (synthesis cost grows with the pixel count: 2 s per 512 px image).
    "cpu": {"sizes": "64,128,256,512", "count": "3000,1000,600,600", "iters": 1200, "lr": 1e-3, "train_tile": 64,
            "val_every": 200},
}


@app.command("reproduce")
def reproduce_command(
    out: Annotated[Path, typer.Argument(help="Output folder: report.md, results.json, plots/, state.json "
                                             "(data and checkpoints under OUT/work/, git-ignored).")],
    protocol: Annotated[str, typer.Option("--protocol", help="Presets: full (the paper's: 64-512 px, 10000 + 10000 "
                                          "images, 100k iterations; for a GPU) or cpu (reduced: trains at every size "
                                          "on 64 px tiles, about 2 hours on 2 cores; see docs/guide.md).  Explicit options override.")] = "full",
    sizes: Annotated[Optional[str], typer.Option("--sizes", help="Comma-separated patch sizes.")] = None,
    count: Annotated[Optional[str], typer.Option("--count", help="Originals and recaptures per size (each): one "
                                                 "number, or one per size (comma-separated).")] = None,
    iters: Annotated[Optional[int], typer.Option("--iters", min=1, help="Training iterations per model.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Initial Adam learning rate.")] = None,
    lr_step: Annotated[Optional[int], typer.Option("--lr-step", min=1, help="Decay the lr x0.9 every N "
                                                   "iterations (default iters/10).")] = None,
    penalty: Annotated[float, typer.Option("--penalty", help="lambda: weight of ||grad_x J||_2 (robust).")] = 10.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, max=MAX_BATCH, help="Mini-batch size.")] = 64,
    val_every: Annotated[Optional[int], typer.Option("--val-every", min=1, help="Validate and checkpoint every N "
                                                     "iterations (default iters/10).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", exists=True, file_okay=False,
                                                 help="Use DIR/<size>/{original,recaptured} instead of synthesizing.")] = None,
    notes: Annotated[Optional[Path], typer.Option("--notes", exists=True, dir_okay=False,
                                                  help="Markdown file shown in the report under 'Why these settings'.")] = None,
    train_tile: Annotated[Optional[int], typer.Option("--train-tile", min=8, help="Train and validate on TxT tiles "
                                                      "of the images of larger sizes; test whole images (reduced protocol).")] = None,
    generator: Annotated[str, typer.Option("--generator", help="Synthesis generator: v3 or v2.")] = "v3",
    scenes: Annotated[Optional[list[Path]], typer.Option("--scenes", exists=True, file_okay=False,
                                                         help="Photo folder(s) to synthesize from (repeatable; e.g. "
                                                              "python -m recapfast.data.scenes OUT, then OUT/train); "
                                                              "the split is then by source photo.  None: procedural "
                                                              "scenes.")] = None,
    models: Annotated[Optional[str], typer.Option("--models", help="BASELINE,ROBUST checkpoints (bundled names or "
                                                  ".safetensors) to evaluate instead of training per size; none: train.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, max=MAX_WORKERS, help="Synthesis processes (default min(2, cores)).")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthesize (or read) data per size, split 40/10/50, train Yang's baseline and the robust model,
    evaluate clean/FGSM/LLCM at eps 1..5 and the worst case (eval --attack auto,llcm, with its gradient-masking
    checks) on up to 256 x (64/size)^2 test patches, and write the report; rerun the same command to resume."""
    from recapfast.io.lock import lock_outputs
    from recapfast.reproduction.config import ReproduceConfig
    from recapfast.reproduction.run import reproduce
    from recapfast.validate import number, output_dir

    if lr is not None:                          # None: the protocol's learning rate (below)
        number(lr, "--lr", 0.0, lo_open=True)
    number(penalty, "--penalty", 0.0)
    output_dir(out, "OUT", force=True)         # created if missing; its parent must exist (reproduce resumes OUT)

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"{protocol!r}: choose {' or '.join(PROTOCOLS)}", param_hint="--protocol")
    preset = PROTOCOLS[protocol]
    sizes = sizes if sizes is not None else preset["sizes"]
    count = count if count is not None else preset["count"]
    iters = iters if iters is not None else preset["iters"]
    lr = lr if lr is not None else preset["lr"]
    train_tile = train_tile if train_tile is not None else preset["train_tile"]
    val_every = val_every if val_every is not None else preset.get("val_every")
    lr_step = lr_step if lr_step is not None else preset.get("lr_step")
    models = models if models is not None else preset.get("models")
    try:
        size_values = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError as err:
        raise typer.BadParameter(f"{sizes!r} is not a comma-separated list of integers", param_hint="--sizes") from err
    try:
        count_values = tuple(int(c) for c in count.split(",") if c.strip())
    except ValueError as err:
        raise typer.BadParameter(f"{count!r} is not a number or a comma-separated list", param_hint="--count") from err
    config = ReproduceConfig(sizes=size_values, count=count_values, iters=iters, train_tile=train_tile,
                             generator=generator,
                             models=tuple(models.split(",")) if models and models != "none" else None, lr=lr, lr_step=lr_step, penalty=penalty,
                             batch_size=batch_size, val_every=val_every, seed=seed,
                             data=str(data) if data is not None else None,
                             scenes=tuple(str(f) for f in scenes) if scenes else None)
    console = stderr_console(quiet)
    log = (lambda msg: console.print(msg, markup=False, highlight=False))
    with lock_outputs(out):
        result = reproduce(out, config, device=resolve_device(device), force=force, workers=workers, log=log,
                           notes=notes.read_text() if notes is not None else None)
    typer.echo(f"{result.report}")

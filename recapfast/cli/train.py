"""recapfast train DIR --out CKPT: train the baseline (Yang) or the robust (Zhao et al.) detector."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import MAX_BATCH, MAX_SIZE, DeviceOpt, ForceOpt, QuietOpt, SeedOpt, WorkersOpt, app, progress_bar, resolve_device, \
    stderr_console


@app.command("train")
def train_command(
    data: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Labelled training folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors; + .json).")],
    robust: Annotated[bool, typer.Option("--robust", help="Gradient-norm penalty + FGSM batch mixing (eq. 5-7).")] = False,
    iters: Annotated[int, typer.Option("--iters", min=0, help="Training iterations.")] = 100_000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, max=MAX_BATCH, help="Mini-batch size m.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Initial Adam learning rate.")] = 1e-4,
    lr_step: Annotated[int, typer.Option("--lr-step", min=1, help="Decay the lr by --lr-decay every N iterations.")] = 10_000,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Learning-rate decay factor.")] = 0.9,
    penalty: Annotated[float, typer.Option("--penalty", help="lambda: weight of ||grad_x J||_2 (robust).")] = 10.0,
    penalty_mode: Annotated[str, typer.Option(
        "--penalty-mode", help="exact: double backprop (eq. 5); fd: finite-difference variant, about half "
                               "the cost (Finlay & Oberman 2019; see bench/NOTES.md).")] = "exact",
    adv_count: Annotated[int, typer.Option("--adv-count", help="k: FGSM images per batch (robust).")] = 32,
    adv_weight: Annotated[float, typer.Option("--adv-weight", help="alpha: weight of the FGSM images' loss.")] = 0.2,
    val: Annotated[Optional[Path], typer.Option("--val", exists=True, file_okay=False,
                                                help="Validation folder (default: hold out 10% of DATA).")] = None,
    val_every: Annotated[int, typer.Option("--val-every", min=1, help="Validate and checkpoint every N iterations.")] = 500,
    size: Annotated[int, typer.Option("--size", min=8, max=MAX_SIZE, help="Patch size (center crop).")] = 64,
    arch: Annotated[Optional[str], typer.Option("--arch", help="laplacian (Yang's LaplacianCNN, the default), bayar "
                                                "(Bayar & Stamm's constrained CNN), meso4 (MesoNet-4); with --init: "
                                                "the checkpoint's (another is refused).")] = None,
    widths: Annotated[Optional[str], typer.Option("--widths", help="Comma-separated widths (default: the arch's; "
                                                                   "laplacian 8,16,32,64,128; with --init: the "
                                                                   "checkpoint's, others are refused).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from OUT's resume state.")] = False,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from this checkpoint's weights (bundled name "
                                                "or .safetensors), e.g. --robust --init baseline.")] = None,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Train a detector (LaplacianCNN, or --arch); keeps the best checkpoint by validation (clean + FGSM eps 2)."""
    from recapfast.models.archs import ARCHS, build
    from recapfast.io.lock import lock_outputs
    from recapfast.training.train import TrainConfig, init_architecture, train
    from recapfast.validate import ArgumentError, check_widths, number, output_file

    # Every argument is checked before anything is deleted or allocated (--force removes the old
    # checkpoint only inside train(), after the data were checked too).
    if arch is not None and arch not in ARCHS:
        raise ArgumentError(f"--arch {arch!r}: choose from {', '.join(ARCHS)}")
    init_widths: tuple = ()
    if init is not None:        # fine-tuning keeps the checkpoint's architecture: --arch/--widths may only repeat it
        init_arch, init_widths = init_architecture(init)
        if arch is not None and arch != init_arch:
            raise ArgumentError(f"--arch {arch}: --init {init} is a {init_arch} checkpoint (fine-tuning keeps its "
                                f"architecture); drop --arch")
        arch = init_arch
    arch = arch or "laplacian"
    if widths is None:
        width_values = tuple(init_widths if init is not None else ARCHS[arch][1])
    elif arch == "laplacian":
        width_values = check_widths(widths)
    else:
        try:
            width_values = tuple(int(w) for w in widths.split(","))
            build(arch, width_values)
        except ValueError as err:
            raise ArgumentError(f"--widths {widths!r}: {err}") from None
    if init is not None and width_values != tuple(init_widths):
        raise ArgumentError(f"--widths {widths}: --init {init} has widths {','.join(map(str, init_widths))} "
                            f"(fine-tuning keeps them); drop --widths")
    for value, option, lo, lo_open in ((lr, "--lr", 0.0, True), (lr_decay, "--lr-decay", 0.0, True),
                                       (penalty, "--penalty", 0.0, False), (adv_weight, "--adv-weight", 0.0, False)):
        number(value, option, lo, lo_open=lo_open)
    if resume and force:
        raise ArgumentError("--resume and --force exclude each other (resume keeps the output, force replaces it)")
    output_file(out, "--out", force=True)              # its folder exists, not a folder or symlink
    from recapfast import distributed  # torchrun: data-parallel ranks; rank 0 writes and prints

    dist_info = distributed.init(resolve_device(device))
    quiet = quiet or not dist_info.is_main
    config = TrainConfig(iters=iters, batch_size=batch_size, lr=lr, lr_decay=lr_decay, lr_step=lr_step,
                         robust=robust, penalty=penalty, penalty_mode=penalty_mode, adv_count=adv_count, adv_weight=adv_weight,
                         val_every=val_every, size=size, seed=seed, widths=width_values, arch=arch,
                         init=init)
    console = stderr_console(quiet)
    bar, advance = progress_bar(console, iters, "train robust" if robust else "train baseline")
    log = (lambda msg: console.print(msg, markup=False, highlight=False))
    config.validate()
    with lock_outputs(out), bar:
        result = train(data, out, config, val_dir=val,
                       device=distributed.rank_device(resolve_device(device), dist_info), workers=workers,
                       resume=resume, log=log, progress=advance, force=force)
    distributed.shutdown()
    if not dist_info.is_main:
        return
    best = result.best
    typer.echo(f"{out}: {result.iterations} iterations in {result.seconds:.1f} s; best validation "
               f"clean {100 * best.get('clean_accuracy', float('nan')):.1f}%, "
               f"FGSM eps 2 {100 * best.get('fgsm_eps2_accuracy', float('nan')):.1f}% "
               f"(iteration {best.get('iteration')})")

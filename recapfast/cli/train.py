"""recapfast train DIR --out CKPT: train the baseline (Yang) or a robust detector (--defense paper|fast-at|trades)."""
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
    robust: Annotated[bool, typer.Option("--robust", help="Same as --defense paper.")] = False,
    defense: Annotated[Optional[str], typer.Option(
        "--defense", help="paper: gradient-norm penalty + FGSM batch mixing (Zhao et al. eq. 5-7); fast-at: FGSM "
                          "from a uniform random start, step 1.25 eps (Wong et al. 2020); trades: CE + beta * KL "
                          "with a PGD-k inner maximization (Zhang et al. 2019). eps ~ U[1, 5] per image, uint8 grid. "
                          "Default: none (the baseline, cross-entropy).")] = None,
    activation: Annotated[Optional[str], typer.Option(
        "--activation", help="LaplacianCNN's activation: relu (default, or --init's), softplus, gelu "
                             "(laplacian --arch only).")] = None,
    iters: Annotated[int, typer.Option("--iters", min=0, help="Training iterations.")] = 100_000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, max=MAX_BATCH, help="Mini-batch size m.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Initial Adam learning rate.")] = 1e-4,
    lr_step: Annotated[int, typer.Option("--lr-step", min=1, help="Decay the lr by --lr-decay every N iterations.")] = 10_000,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Learning-rate decay factor.")] = 0.9,
    penalty: Annotated[Optional[float], typer.Option(
        "--penalty", help="lambda: weight of ||grad_x J||_2 (paper; default 10).")] = None,
    penalty_mode: Annotated[Optional[str], typer.Option(
        "--penalty-mode", help="exact: double backprop (eq. 5; default); fd: finite-difference variant, about half "
                               "the cost (Finlay & Oberman 2019; see bench/NOTES.md). paper only.")] = None,
    adv_count: Annotated[Optional[int], typer.Option(
        "--adv-count", help="k: FGSM images per batch (paper; default 32).")] = None,
    adv_weight: Annotated[Optional[float], typer.Option(
        "--adv-weight", help="alpha: weight of the FGSM images' loss (paper; default 0.2).")] = None,
    fast_at_step: Annotated[Optional[float], typer.Option(
        "--fast-at-step", help="fast-at's FGSM step in units of each image's eps (default 1.25).")] = None,
    trades_beta: Annotated[Optional[float], typer.Option(
        "--trades-beta", help="TRADES' beta, >= 0 (default 6).")] = None,
    trades_steps: Annotated[Optional[int], typer.Option(
        "--trades-steps", help="k of TRADES' PGD-k inner maximization, >= 1 (default 10).")] = None,
    trades_step_size: Annotated[Optional[float], typer.Option(
        "--trades-step-size", help="its step in units of each image's eps (default 2.5 / k).")] = None,
    val_attack: Annotated[Optional[str], typer.Option(
        "--val-attack", help="A defence keeps the checkpoint of the best mean of the weakest class's clean and "
                             "worst-case accuracy at eps 2 under FGSM + apgd (APGD-CE; default), or of clean and "
                             "FGSM accuracy under fgsm alone (the rule the "
                             "bundled robust model was selected by). The baseline keeps the best clean "
                             "accuracy.")] = None,
    val_attack_steps: Annotated[Optional[int], typer.Option(
        "--val-attack-steps", help="APGD iterations of that check, >= 1 (default 10).")] = None,
    val_eps: Annotated[Optional[float], typer.Option(
        "--val-eps", help="eps in grey levels of that check (default 2; >= 1, the APGD integer box).")] = None,
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
    """Train a detector (LaplacianCNN, or --arch), plain or with a --defense; keeps the best checkpoint by validation
    (clean accuracy; with a defence clean + worst case under FGSM and APGD at eps 2)."""
    from recapfast.models.archs import ARCHS, build
    from recapfast.io.lock import lock_outputs
    from recapfast.training.train import TrainConfig, init_architecture, train
    from recapfast.validate import ArgumentError, check_eps, check_widths, number, output_file

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
                                       (penalty, "--penalty", 0.0, False), (adv_weight, "--adv-weight", 0.0, False),
                                       (fast_at_step, "--fast-at-step", 0.0, True),
                                       (trades_beta, "--trades-beta", 0.0, False),
                                       (trades_steps, "--trades-steps", 1, False),
                                       (trades_step_size, "--trades-step-size", 0.0, True),
                                       (val_attack_steps, "--val-attack-steps", 1, False)):
        if value is not None:
            number(value, option, lo, lo_open=lo_open)
    if val_eps is not None:
        val_eps = check_eps([val_eps], "--val-eps", attacks=("apgd",))[0]
    options = dict(penalty=penalty, penalty_mode=penalty_mode, adv_count=adv_count, adv_weight=adv_weight,
                   fast_at_step=fast_at_step, trades_beta=trades_beta, trades_steps=trades_steps,
                   trades_step=trades_step_size, val_attack=val_attack, val_attack_steps=val_attack_steps,
                   val_eps=val_eps)
    defense_name = _check_defense(defense, robust, activation, arch, options)
    if resume and force:
        raise ArgumentError("--resume and --force exclude each other (resume keeps the output, force replaces it)")
    output_file(out, "--out", force=True)              # its folder exists, not a folder or symlink
    from recapfast import distributed  # torchrun: data-parallel ranks; rank 0 writes and prints

    dist_info = distributed.init(resolve_device(device))
    quiet = quiet or not dist_info.is_main
    config = TrainConfig(iters=iters, batch_size=batch_size, lr=lr, lr_decay=lr_decay, lr_step=lr_step,
                         defense=defense_name, val_every=val_every, size=size, seed=seed, widths=width_values,
                         arch=arch, init=init, activation=activation,
                         **{k: v for k, v in options.items() if v is not None})
    console = stderr_console(quiet)
    bar, advance = progress_bar(console, iters, f"train {defense_name}" if config.robust else "train baseline")
    log = (lambda msg: console.print(msg, markup=False, highlight=False))
    config.validate()
    with lock_outputs(out), bar:
        result = train(data, out, config, val_dir=val,
                       device=distributed.rank_device(resolve_device(device), dist_info), workers=workers,
                       resume=resume, log=log, progress=advance, force=force)
    distributed.shutdown()
    if not dist_info.is_main:
        return
    from recapfast.training.selection import weakest

    best = result.best
    e = f"{config.val_eps:g}"
    worst, worst_pc = best.get(f"worst_eps{e}_accuracy"), best.get(f"worst_eps{e}_accuracy_per_class")
    typer.echo(f"{out}: {result.iterations} iterations in {result.seconds:.1f} s; best validation "
               f"clean {100 * best.get('clean_accuracy', float('nan')):.1f}%, "
               f"FGSM eps {e} {100 * best.get(f'fgsm_eps{e}_accuracy', float('nan')):.1f}%"
               + (f", worst case (FGSM + APGD-{config.val_attack_steps}) eps {e} {100 * worst:.1f}%"
                  if worst is not None else "")
               + (f" (weakest class: clean {100 * weakest(best['clean_accuracy_per_class']):.1f}%, worst case "
                  f"{100 * weakest(worst_pc):.1f}%)" if worst_pc else "") + f" (iteration {best.get('iteration')})")


PAPER_ONLY = ("penalty", "penalty_mode", "adv_count", "adv_weight")
ONLY = {"paper": PAPER_ONLY, "fast-at": ("fast_at_step",), "trades": ("trades_beta", "trades_steps", "trades_step")}
FLAGS = {"trades_step": "--trades-step-size"}


def _check_defense(defense, robust: bool, activation, arch: str, options: dict) -> str:
    """The training's defence name (none, paper, fast-at, trades), or one line on what does not fit together."""
    from recapfast.models.laplacian import ACTIVATIONS
    from recapfast.training.defenses import DEFENSES
    from recapfast.training.train import PENALTY_MODES, VAL_ATTACKS
    from recapfast.validate import ArgumentError

    if defense is not None and defense not in DEFENSES[1:]:
        raise ArgumentError(f"--defense {defense!r}: choose from {', '.join(DEFENSES[1:])}")
    if robust and defense not in (None, "paper"):
        raise ArgumentError(f"--robust is --defense paper; it does not go with --defense {defense}")
    name = defense or ("paper" if robust else "none")
    if activation is not None and activation not in ACTIVATIONS:
        raise ArgumentError(f"--activation {activation!r}: choose from {', '.join(ACTIVATIONS)}")
    if activation is not None and arch != "laplacian":
        raise ArgumentError(f"--activation is for --arch laplacian, not {arch}")
    if options["penalty_mode"] is not None and options["penalty_mode"] not in PENALTY_MODES:
        raise ArgumentError(f"--penalty-mode {options['penalty_mode']!r}: choose from {', '.join(PENALTY_MODES)}")
    if options["val_attack"] is not None and options["val_attack"] not in VAL_ATTACKS:
        raise ArgumentError(f"--val-attack {options['val_attack']!r}: choose from {', '.join(VAL_ATTACKS)}")
    flag = lambda key: FLAGS.get(key, "--" + key.replace("_", "-"))  # noqa: E731
    for owner, keys in ONLY.items():
        for key in keys:
            if options[key] is not None and name != owner:
                raise ArgumentError(f"{flag(key)} is an option of --defense {owner}"
                                    + (f", not of --defense {name}" if name != "none" else ""))
    for key in ("val_attack", "val_attack_steps", "val_eps"):
        if options[key] is not None and name == "none":
            raise ArgumentError(f"{flag(key)} is for a --defense (the baseline keeps the best clean accuracy)")
    if options["val_attack_steps"] is not None and options["val_attack"] == "fgsm":
        raise ArgumentError("--val-attack-steps counts APGD iterations; it does not go with --val-attack fgsm")
    return name

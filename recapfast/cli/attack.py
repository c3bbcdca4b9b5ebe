"""recapfast attack DIR --out OUT: write adversarial uint8 PNGs mirroring DIR's tree, plus a manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import (BatchOpt, DeviceOpt, ExistingDir, ForceOpt, QuietOpt, SizeOpt, TileOpt, WorkersOpt,
                   app, parse_attacks, parse_floats, progress_bar, resolve_device, stderr_console)
from ._models import (AnyModelOpt, ApgdRestartsOpt, ApgdStepsOpt, AttackSeedOpt, InputRangeOpt, MeanOpt,
                      SquareQueriesOpt, SquareRestartsOpt, StdOpt, WeightsOpt)


@app.command("attack")
def attack_command(
    data: ExistingDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (new or empty unless --force).")],
    attack: Annotated[str, typer.Option("--attack", help="One of fgsm, llcm, bim, illc, pgd, mifgsm, apgd, square.")
    ] = "fgsm",
    eps: Annotated[str, typer.Option("--eps", help="eps in grey levels.")] = "2",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Iterations of bim/illc/pgd/mifgsm.")] = None,
    apgd_steps: ApgdStepsOpt = 100,
    apgd_restarts: ApgdRestartsOpt = 1,
    square_queries: SquareQueriesOpt = 1000,
    square_restarts: SquareRestartsOpt = 1,
    attack_seed: AttackSeedOpt = 0,
    model: AnyModelOpt = "baseline",
    weights: WeightsOpt = None,
    input_range: InputRangeOpt = "255",
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = 64,
    tile: TileOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make adversarial images; evaluating OUT clean reproduces `eval`'s number for this attack and eps."""
    from ..attacks import ATTACKS
    from ..data import discover
    from ..export import export_adversarial
    from ..iterative import ITERATIVE_ATTACKS, IterativeConfig
    from ..trust import EXTRA_ATTACKS
    from ._models import load_cli_model, trust_config

    attacks = parse_attacks(attack, ATTACKS + ITERATIVE_ATTACKS + EXTRA_ATTACKS)
    eps_values = parse_floats(eps, "--eps")
    if len(attacks) != 1 or len(eps_values) != 1:
        raise typer.BadParameter("attack writes one attack at one eps per run", param_hint="--attack/--eps")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise typer.BadParameter(f"{out} exists and is not empty (use --force to write into it)", param_hint="--out")
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise typer.BadParameter(f"{out} is inside the input folder {data}", param_hint="--out")
    console = stderr_console(quiet)
    net = load_cli_model(model, resolve_device(device), weights, input_range, mean, std)
    extra = trust_config(apgd_steps, apgd_restarts, square_queries, square_restarts, attack_seed)
    total = sum(1 for _ in discover(data, labelled=any((data / c).is_dir() for c in ("original", "recaptured"))))
    bar, advance = progress_bar(console, total, f"{attacks[0]} eps {eps_values[0]:g}")
    with bar:
        result = export_adversarial(net, data, out, attacks[0], eps_values[0], size=size, tile=tile,
                                    batch_size=batch_size, workers=workers, model_name=model, progress=advance,
                                    iterative=IterativeConfig(steps=steps, seed=attack_seed), extra=extra,
                                    on_error=None if quiet else (lambda p, r: console.print(
                                        f"skipped {p}: {r}", markup=False, highlight=False)))
    acc = "" if result.labelled == 0 else f"; adversarial accuracy {100 * result.accuracy:.1f}%"
    typer.echo(f"{attacks[0].upper()} eps {eps_values[0]:g}: wrote {result.patches} PNGs for {result.files} files "
               f"to {out} ({len(result.errors)} skipped){acc}; manifest {out / 'manifest.json'}")

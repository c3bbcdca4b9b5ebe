"""recapfast attack DIR --out OUT: write adversarial uint8 PNGs mirroring DIR's tree, plus a manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import ExistingDir, SizeOpt, TileOpt, app, progress_bar, resolve_device, stderr_console
from ._models import PgdSeedOpt
from ._options import BUDGET, DETECTOR, RUN, Options, grouped


@app.command("attack")
@grouped
def attack_command(
    data: ExistingDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (new or empty unless --force/--resume; "
                                                          "its parent must exist).")],
    attack: Annotated[str, typer.Option("--attack", help="fgsm, llcm, an iterative attack: bim, illc, pgd, "
                                                         "mifgsm, or apgd, square.")] = "fgsm",
    eps: Annotated[str, typer.Option("--eps", help="eps in grey levels.")] = "2",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Iterative attacks (bim/illc/pgd/mifgsm): "
                                                 "iterations (default Kurakin's floor(min(eps+4, 1.25 eps))).")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", help="Iterative attacks: step in grey "
                                                       "levels (default 1).")] = None,
    pgd_seed: PgdSeedOpt = 0,
    full_size: Annotated[bool, typer.Option("--full-size", help="Write the whole adversarial image (every tile "
                                            "of the --size grid attacked in place), not a crop.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT: skip the files its manifest.jsonl "
                                                          "already holds.")] = False,
    budget: Options = BUDGET,
    detector: Options = DETECTOR,
    size: SizeOpt = 64,
    tile: TileOpt = False,
    run: Options = RUN,
) -> None:
    """Make adversarial images; evaluating OUT clean reproduces `eval`'s number for this attack and eps."""
    from recapfast.data.folder import discover
    from recapfast.engine.export import export_adversarial
    from recapfast.attacks.iterative import IterativeConfig
    from recapfast.validate import ArgumentError, check_step_size, output_dir, output_outside
    from ._models import load_cli_model, parse_attack_eps, trust_config

    attacks, eps_values = parse_attack_eps(attack, eps, True, auto=False)
    if len(attacks) != 1 or len(eps_values) != 1:
        raise ArgumentError("--attack/--eps: attack writes one attack at one eps per run")
    if resume and run.force:
        raise ArgumentError("--resume and --force exclude each other (resume keeps the output, force replaces it)")
    if tile and full_size:
        raise ArgumentError("--tile and --full-size exclude each other")
    step_size = check_step_size(step_size, True)
    output_outside(out, "--out", data)
    output_dir(out, "--out", run.force, resume, resumable=True)
    console = stderr_console(run.quiet)
    net = load_cli_model(detector, resolve_device(run.device), size)
    extra = trust_config(budget)
    total = sum(1 for _ in discover(data, labelled=any((data / c).is_dir() for c in ("original", "recaptured"))))
    bar, advance = progress_bar(console, total, f"{attacks[0]} eps {eps_values[0]:g}")
    with bar:
        result = export_adversarial(net, data, out, attacks[0], eps_values[0], size=size, tile=tile,
                                    batch_size=run.batch_size, workers=run.workers, model_name=detector.model,
                                    progress=advance,
                                    extra=extra,
                                    on_error=None if run.quiet else (lambda p, r: console.print(
                                        f"skipped {p}: {r}", markup=False, highlight=False)),
                                    full_size=full_size, resume=resume, force=run.force,
                                    iterative=IterativeConfig(steps=steps, step_size=step_size, seed=pgd_seed))
    acc = "" if result.labelled == 0 else f"; adversarial accuracy {100 * result.accuracy:.1f}%"
    kept = f", {result.skipped} already done" if result.skipped else ""
    typer.echo(f"{attacks[0].upper()} eps {eps_values[0]:g}: wrote {result.patches} PNGs for {result.files} files "
               f"to {out} ({len(result.errors)} skipped{kept}){acc}; manifest {out / 'manifest.json'}")

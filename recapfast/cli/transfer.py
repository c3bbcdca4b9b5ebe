"""recapfast transfer DIR --source A --target B[,C...]: attacks crafted on A, evaluated on every model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import (BatchOpt, DeviceOpt, ExistingDir, ForceOpt, QuietOpt, SeedOpt, SizeOpt, app, check_new_file,
                   parse_attacks, progress_bar, resolve_device, stderr_console, write_text_atomic)


@app.command("transfer")
def transfer_command(
    data: ExistingDir,
    source: Annotated[str, typer.Option("--source", help="Model the perturbations are crafted on (name or path).")],
    target: Annotated[str, typer.Option("--target", help="Comma-separated models they are evaluated on.")],
    attack: Annotated[str, typer.Option("--attack", help="Per-image attacks: fgsm, llcm, bim, illc, pgd, mifgsm.")]
    = "fgsm,bim",
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated eps in grey levels.")] = "2,5",
    xi: Annotated[str, typer.Option("--xi", help="Comma-separated xi of the source's data-free UAPs "
                                                  "('' for none).")] = "5",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Iterative attack steps.")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", help="Iterative step (grey levels, >= 0.5).")]
    = None,
    uap_iters: Annotated[int, typer.Option("--uap-iters", min=1, help="Data-free UAP ascent steps.")] = 100,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the matrix as JSON here.")] = None,
    md_out: Annotated[Optional[Path], typer.Option("--md", help="Also write the markdown table here.")] = None,
    size: SizeOpt = 64,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Transferability matrix: accuracy of each model under perturbations crafted on the source model."""
    from ..attacks import ATTACKS
    from ..checkpoint import load_model
    from ..data import DataError, discover
    from ..iterative import ITERATIVE_ATTACKS, IterativeConfig
    from ..transfer import transfer_matrix

    from ..lock import lock_outputs
    from ..validate import check_step_size, parse_eps, parse_xi

    attacks = parse_attacks(attack, ATTACKS + ITERATIVE_ATTACKS)
    eps_values = parse_eps(eps, "--eps", True, attacks)
    xi_values = parse_xi(xi, "--xi", allow_empty=True)
    step_size = check_step_size(step_size, True)
    targets = [t.strip() for t in target.split(",") if t.strip()]
    if not targets:
        raise typer.BadParameter("give one or more target models", param_hint="--target")
    for path, option in ((json_out, "--json"), (md_out, "--md")):
        check_new_file(path, force, option)
    console = stderr_console(quiet)
    dev = resolve_device(device)
    with lock_outputs(json_out, md_out):
        models = {name: load_model(name, dev) for name in dict.fromkeys([source] + targets)}
        samples = discover(data)
        bar, advance = progress_bar(console, len(samples), f"transfer from {source}")
        with bar:
            result = transfer_matrix(models, data, source, targets, attacks, eps_values, xi_values, size=size,
                                     batch_size=batch_size, iterative=IterativeConfig(steps=steps, step_size=step_size),
                                     uap_iterations=uap_iters, seed=seed, samples=samples, progress=advance)
        if result.patches == 0:
            raise DataError(f"{data}: no file could be used (every file was skipped)")
        if json_out is not None:
            write_text_atomic(json_out, result.to_json())
        if md_out is not None:
            write_text_atomic(md_out, result.to_markdown())
    typer.echo(result.to_markdown())

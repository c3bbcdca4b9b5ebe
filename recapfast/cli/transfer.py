"""recapfast transfer DIR --source A --target B[,C...]: attacks crafted on A, evaluated on every model
(--cross: every model as the source in turn, the cross-model matrix)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import (ExistingDir, SeedOpt, SizeOpt, app, check_new_file, progress_bar, resolve_device, stderr_console,
                   write_text_atomic)
from ._models import ATTACK_HELP, VerboseOpt
from ._options import BUDGET, CONVENTION, RUN, Options, grouped


@app.command("transfer")
@grouped
def transfer_command(
    data: ExistingDir,
    source: Annotated[str, typer.Option("--source", help="Model the perturbations are crafted on (name or path).")],
    target: Annotated[str, typer.Option("--target", help="Comma-separated models they are evaluated on.")],
    attack: Annotated[str, typer.Option("--attack", help="Per-image attacks: " + ATTACK_HELP + ".")]
    = "fgsm,bim",
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated eps in grey levels.")] = "2,5",
    xi: Annotated[Optional[str], typer.Option("--xi", help="Comma-separated xi of the source's data-free UAPs "
                                                            "('' for none; default 5 for a LaplacianCNN source, "
                                                            "none otherwise and with --cross).")] = None,
    cross: Annotated[bool, typer.Option("--cross", help="Every model (source and targets) as the source in turn: "
                                                        "the cross-model matrix (no UAPs).")] = False,
    budget: Options = BUDGET.but(drop=("attack_seed",)),
    external: Options = CONVENTION,
    verbose: VerboseOpt = False,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Iterative attack steps.")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", help="Iterative step (grey levels, >= 0.5).")]
    = None,
    uap_iters: Annotated[int, typer.Option("--uap-iters", min=1, help="Data-free UAP ascent steps.")] = 100,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the matrix as JSON here.")] = None,
    md_out: Annotated[Optional[Path], typer.Option("--md", help="Also write the markdown table here.")] = None,
    size: SizeOpt = 64,
    seed: SeedOpt = 0,
    run: Options = RUN.but(drop=("workers",)),
) -> None:
    """Transferability matrix: accuracy of each model under perturbations crafted on the source model."""
    from recapfast.data.folder import DataError, discover
    from recapfast.attacks.iterative import IterativeConfig
    from recapfast.engine.transfer import cross_model_matrix, transfer_matrix
    from recapfast.models.zoo import kind_of
    from ._models import convention, parse_attack_eps, trust_config

    from recapfast.io.lock import lock_outputs
    from recapfast.validate import check_step_size, distinct_outputs, parse_xi

    attacks, eps_values = parse_attack_eps(attack, eps, True)
    xi_values = [] if xi is None else parse_xi(xi, "--xi", allow_empty=True)
    step_size = check_step_size(step_size, True)
    targets = [t.strip() for t in target.split(",") if t.strip()]
    if not targets:
        raise typer.BadParameter("give one or more target models", param_hint="--target")
    distinct_outputs(("--json", json_out), ("--md", md_out))
    for path, option in ((json_out, "--json"), (md_out, "--md")):
        check_new_file(path, run.force, option)
    if cross and xi_values:
        raise typer.BadParameter("--cross makes no UAPs; drop --xi", param_hint="--xi")
    console = stderr_console(run.quiet)
    dev = resolve_device(run.device)
    from recapfast.models.zoo import load_detector

    conv = convention(external)
    names = list(dict.fromkeys([source] + targets))
    with lock_outputs(json_out, md_out):
        # The input convention flags apply to the external models (.pt2, pkg.module:factory) only.
        models = {name: load_detector(name, dev, None, None if kind_of(name) == "checkpoint" else conv, verbose)
                  for name in names}
        if xi is None and not cross and hasattr(models[source], "units"):
            xi_values = [5.0]
        samples = discover(data)
        common = dict(size=size, batch_size=run.batch_size, seed=seed, samples=samples,
                      iterative=IterativeConfig(steps=steps, step_size=step_size), extra=trust_config(budget, seed))
        bar, advance = progress_bar(console, len(samples) * (len(names) if cross else 1),
                                    "cross-model transfer" if cross else f"transfer from {source}")
        with bar:
            if cross:
                result = cross_model_matrix(models, data, attacks, eps_values, progress=advance, **common)
            else:
                result = transfer_matrix(models, data, source, targets, attacks, eps_values, xi_values,
                                         uap_iterations=uap_iters, progress=advance, **common)
        if result.patches == 0:
            raise DataError(f"{data}: no file could be used (every file was skipped)")
        if json_out is not None:
            write_text_atomic(json_out, result.to_json())
        if md_out is not None:
            write_text_atomic(md_out, result.to_markdown())
    typer.echo(result.to_markdown())

"""recapfast eval DIR: clean accuracy and accuracy under FGSM/LLCM at each eps."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import (BatchOpt, DeviceOpt, ExistingDir, ForceOpt, ModelOpt, QuantizeOpt, QuietOpt, SizeOpt, TileOpt,
                   WorkersOpt, app, check_new_file, parse_attacks, parse_floats, progress_bar, resolve_device,
                   stderr_console, write_text_atomic)


@app.command("eval")
def eval_command(
    data: ExistingDir,
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated eps in grey levels.")] = "1,2,3,4,5",
    attack: Annotated[str, typer.Option("--attack", help="Comma-separated attacks: fgsm, llcm.")] = "fgsm,llcm",
    model: ModelOpt = "baseline",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON here.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write one CSV row per attack x eps.")] = None,
    md_out: Annotated[Optional[Path], typer.Option("--md", help="Also write the markdown tables here.")] = None,
    size: SizeOpt = 64,
    tile: TileOpt = False,
    quantize: QuantizeOpt = True,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a detector on a labelled folder, clean and under attack (the paper's Tables 1-3)."""
    from ..attacks import ATTACKS
    from ..checkpoint import load_model
    from ..data import discover
    from ..evaluate import evaluate_folder

    eps_values = parse_floats(eps, "--eps")
    attacks = parse_attacks(attack, ATTACKS)
    for path, option in ((json_out, "--json"), (csv_out, "--csv"), (md_out, "--md")):
        check_new_file(path, force, option)
    console = stderr_console(quiet)
    net = load_model(model, resolve_device(device))
    samples = discover(data)
    bar, advance = progress_bar(console, len(samples), f"eval {model}")
    on_error = (lambda p, r: console.print(f"[yellow]skipped[/] {p}: {r}", markup=True, highlight=False))
    with bar:
        result = evaluate_folder(net, data, eps_values, attacks, size=size, tile=tile, batch_size=batch_size,
                                 workers=workers, quantize=quantize, model_name=model, progress=advance,
                                 on_error=None if quiet else on_error, samples=samples)
    typer.echo(result.to_markdown())
    if json_out is not None:
        write_text_atomic(json_out, result.to_json())
    if csv_out is not None:
        write_text_atomic(csv_out, result.to_csv())
    if md_out is not None:
        write_text_atomic(md_out, result.to_markdown())

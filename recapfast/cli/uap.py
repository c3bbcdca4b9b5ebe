"""recapfast uap --model M --xi 5 --out uap.png: a universal perturbation (data-free, or from a folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import DeviceOpt, ForceOpt, ModelOpt, QuietOpt, SeedOpt, SizeOpt, app, progress_bar, resolve_device, \
    stderr_console


@app.command("uap")
def uap_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG (delta + 128; a .json is written beside it).")],
    xi: Annotated[float, typer.Option("--xi", help="L-inf bound in grey levels (1..127; the delta is integer).")] = 5.0,
    model: ModelOpt = "baseline",
    data: Annotated[Optional[Path], typer.Option("--data", exists=True, file_okay=False, readable=True,
                                                 help="Folder of images: make a data-driven UAP from them "
                                                      "(default: data-free).")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iters", min=1, help="Sign-ascent steps (default: 100 "
                                                      "data-free, 20 passes over --data).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many images of --data (seeded).")] = 2000,
    size: SizeOpt = 64,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make a universal adversarial perturbation with ||delta||_inf <= xi for every image (Huang et al. 2020)."""
    from recapfast.models.checkpoint import load_model
    from recapfast.io.lock import lock_outputs
    from recapfast.attacks.universal import data_driven_uap, data_free_uap, load_patches, save_uap
    from recapfast.validate import check_xi, output_file

    (xi,) = check_xi([xi])
    if out.suffix.lower() != ".png":
        raise typer.BadParameter(f"{out}: a UAP is written as a .png file", param_hint="--out")
    output_file(out, "--out", force)
    output_file(out.with_suffix(".json"), "--out", force)
    console = stderr_console(quiet)
    dev = resolve_device(device)
    with lock_outputs(out):
        net = load_model(model, dev)
        if data is None:
            n = iterations or 100
            bar, advance = progress_bar(console, n, f"data-free UAP xi {xi:g}")
            with bar:
                uap = data_free_uap(net, xi, size=size, iterations=n, seed=seed, model_name=model, progress=advance)
        else:
            n = iterations or 20
            patches = load_patches(data, size, limit=limit, seed=seed)
            bar, advance = progress_bar(console, n, f"data-driven UAP xi {xi:g} ({patches.shape[0]} images)")
            with bar:
                uap = data_driven_uap(net, patches, xi, iterations=n, seed=seed, model_name=model, progress=advance)
        save_uap(uap, out, force=force)
    typer.echo(f"{uap.method} UAP, xi {xi:g}, {size}x{size}, model {model}: wrote {out} and {out.with_suffix('.json')}"
               f" (L-inf {uap.info()['linf']})")

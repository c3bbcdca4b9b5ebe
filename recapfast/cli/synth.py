"""recapfast synth OUT: write a synthetic recapture data set (original/ and recaptured/ PNGs + manifest)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import QuietOpt, SeedOpt, app, progress_bar, stderr_console


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Argument(help="Output folder (created; must not hold images already).")],
    size: Annotated[int, typer.Option("--size", min=8, help="Image size in pixels.")] = 64,
    count: Annotated[int, typer.Option("--count", min=1, help="Images PER CLASS.")] = 1000,
    seed: SeedOpt = 0,
    jpeg_prob: Annotated[float, typer.Option("--jpeg-prob", min=0.0, max=1.0,
                                             help="Probability of a JPEG stage in each capture.")] = 0.3,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Generator processes.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Synthesize originals (one camera capture) and recaptures (display + second capture) of random scenes."""
    from ..lock import lock_outputs
    from ..synth import synthesize
    from ..validate import number, output_dir

    number(jpeg_prob, "--jpeg-prob", 0.0, 1.0)
    output_dir(out, "OUT", force=True)         # created if missing; its parent must exist (synth refuses old images)
    console = stderr_console(quiet)
    bar, advance = progress_bar(console, 2 * count, "synth")
    with lock_outputs(out), bar:
        manifest = synthesize(out, size=size, count=count, seed=seed, workers=workers, jpeg_prob=jpeg_prob,
                              progress=advance)
    typer.echo(f"wrote {2 * count} images ({count} original + {count} recaptured, {size}x{size}) to {out}; "
               f"manifest {Path(out) / 'manifest.json'} (seed {manifest.get('seed', seed)})")

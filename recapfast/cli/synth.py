"""recapfast synth OUT: write a synthetic recapture data set (original/ and recaptured/ PNGs + manifest)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import MAX_SIZE, MAX_WORKERS, QuietOpt, SeedOpt, app, progress_bar, stderr_console


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Argument(help="Output folder (created; must not hold images already).")],
    size: Annotated[int, typer.Option("--size", min=8, max=MAX_SIZE, help="Image size in pixels.")] = 64,
    count: Annotated[int, typer.Option("--count", min=1, help="Images PER CLASS (over all splits with --scenes).")] = 1000,
    seed: SeedOpt = 0,
    jpeg_prob: Annotated[float, typer.Option("--jpeg-prob", min=0.0, max=1.0,
                                             help="Probability of a JPEG stage in each capture.")] = 0.3,
    generator: Annotated[str, typer.Option("--generator", help="v3 (physical recapture optics, subtle traces) "
                                           "or v2 (the earlier generator).")] = "v3",
    scenes: Annotated[Optional[list[Path]], typer.Option("--scenes", help="Folder of real photographs used as "
                                                         "scenes (v3; repeat for several folders, one pool); output "
                                                         "is split by source photo into train/val/test.")] = None,
    split: Annotated[str, typer.Option("--split", help="Train/val/test fractions of the photos and images "
                                       "(with --scenes).")] = "0.8,0.1,0.1",
    procedural: Annotated[float, typer.Option("--procedural", min=0.0, max=1.0, help="Share of images with "
                                              "procedural scenes (with --scenes).")] = 0.0,
    direct: Annotated[float, typer.Option("--direct", min=0.0, max=1.0, help="Share of photo-scene images that use "
                                          "the photo itself: the original is its pixels, the recapture shows them "
                                          "(the rest: simulated captures of the photo as a scene).")] = 1.0,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, max=MAX_WORKERS, help="Generator processes.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Synthesize originals (one camera capture) and recaptures (display + second capture) of random scenes."""
    from recapfast.io.lock import lock_outputs
    from recapfast.data.synth_sets import synthesize
    from recapfast.validate import number, output_dir

    number(jpeg_prob, "--jpeg-prob", 0.0, 1.0)
    output_dir(out, "OUT", force=True)         # created if missing; its parent must exist (synth refuses old images)
    try:
        fractions = tuple(float(f) for f in split.split(","))
    except ValueError as err:
        raise typer.BadParameter(f"{split!r} is not three comma-separated fractions", param_hint="--split") from err
    console = stderr_console(quiet)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))     # one unwrapped line per skipped file
    bar, advance = progress_bar(console, 2 * count, "synth")
    with lock_outputs(out), bar:
        manifest = synthesize(out, size=size, count=count, seed=seed, workers=workers, jpeg_prob=jpeg_prob,
                              progress=advance, generator=generator, scenes_dir=list(scenes) if scenes else None, split=fractions,
                              procedural=procedural, direct=direct, log=log)
    where = f"{out}" if not scenes else ", ".join(
        f"{out / k} ({v['count']} + {v['count']}, {len(v['photos'])} photos)" for k, v in manifest["splits"].items())
    typer.echo(f"wrote {2 * count} images ({count} original + {count} recaptured, {size}x{size}, "
               f"{manifest['generator']}) to {where}; manifest {Path(out) / 'manifest.json'} (seed {manifest.get('seed', seed)})")

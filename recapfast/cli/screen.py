"""recapfast screen DIR --out results.jsonl: which images look recaptured, and which verdicts are fragile."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import MAX_SIZE, app, progress_bar, resolve_device, stderr_console
from ._options import DETECTOR, RUN, Options, grouped


@app.command("screen")
@grouped
def screen_command(
    data: Annotated[Path, typer.Argument(exists=True, file_okay=True, dir_okay=True,
                                         help="Folder (searched recursively) or one image file; no labels needed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records, one JSON object per line (.jsonl).")],
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write the records (no tile maps) as CSV.")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="Also write one self-contained HTML report "
                                                     "(thumbnails, tile heatmaps, sortable rows; no network).")] = None,
    detector: Options = DETECTOR,
    size: Annotated[int, typer.Option("--size", min=8, max=MAX_SIZE, help="Tile size in pixels (the model's patch size).")] = 64,
    probe_eps: Annotated[str, typer.Option("--probe-eps", help="Eps (grey levels) probed with FGSM and LLCM to "
                                           "find the smallest that flips the decision (each >= 0.5, <= 255); "
                                           "'none' to skip (then flip_eps and fragile are null).")] = "1,2,3,4,5",
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                             help="Decision: recaptured when mean tile p >= this.")] = 0.5,
    fragile_eps: Annotated[float, typer.Option("--fragile-eps", min=0.0,
                                               help="fragile = flip_eps <= this (grey levels).")] = 1.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse images with more pixels "
                                            "(per-file error record).")] = 50_000_000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT: skip files it already holds.")] = False,
    resume_by: Annotated[str, typer.Option("--resume-by", help="Done-file key: stat (path + size + mtime) "
                                           "or sha256 (content).")] = "stat",
    tile_map_inline: Annotated[int, typer.Option("--tile-map-inline", min=0, help="Tile maps with more tiles "
                                                 "go to a side file OUT_STEM.tiles/INDEX.json.")] = 256,
    rows: Annotated[int, typer.Option("--rows", min=0, help="Table on stdout: every file when there are at most "
                                      "2 x ROWS, else the first ROWS and the worst ROWS (smallest flip_eps); "
                                      "0: the summary line only.")] = 10,
    run: Options = RUN.but(batch_size=32),
) -> None:
    """Screen a folder: per image p(recaptured), decision, tile map, the smallest flipping eps, errors."""
    from recapfast import distributed
    from recapfast.errors import raised_by_every_rank
    from recapfast.engine.screen import ScreenConfig, screen_folder
    from recapfast.reporting import screen_table
    from ._models import load_cli_model, model_label

    from recapfast.validate import distinct_outputs, number, output_file, parse_probe_eps

    eps_values = parse_probe_eps(probe_eps) or []
    threshold = number(threshold, "--threshold", 0.0, 1.0)
    fragile_eps = number(fragile_eps, "--fragile-eps", 0.0, 255.0)
    if resume_by not in ("stat", "sha256"):
        raise typer.BadParameter(f"{resume_by!r}: choose stat or sha256", param_hint="--resume-by")
    from recapfast.engine.screen.records import summary_path, tiles_dir

    distinct_outputs(("--out", out, {"summary file": summary_path(out), "tile-map folder": tiles_dir(out)}),
                     ("--csv", csv_out), ("--html", html_out))
    output_file(out, "--out", run.force, resume, resumable=True)
    output_file(csv_out, "--csv", run.force, resume)
    output_file(html_out, "--html", run.force, resume)
    dev = resolve_device(run.device)
    info = distributed.init(dev)
    dev = distributed.rank_device(dev, info)
    quiet = run.quiet or not info.is_main
    console = stderr_console(quiet)
    net = load_cli_model(detector, dev, size)
    config = ScreenConfig(size=size, probe_eps=tuple(eps_values), threshold=threshold, fragile_eps=fragile_eps,
                          max_pixels=max_pixels, batch_size=run.batch_size, workers=run.workers, resume_by=resume_by,
                          tile_map_inline=tile_map_inline, model=model_label(detector))
    bar, advance = progress_bar(console, None, f"screen {detector.model}")
    log = (lambda msg: console.print(msg, markup=False, highlight=False))
    try:
        with bar:
            result = screen_folder(net, data, out, config, resume=resume, force=run.force, csv_out=csv_out,
                                   progress=advance, log=log)
    except BaseException as err:
        if not raised_by_every_rank(err):   # an error of every rank: the CLI prints it on each, then leaves
            distributed.shutdown()
        raise
    distributed.shutdown()
    if info.is_main:
        typer.echo(screen_table.table(out, result.summary, rows, threshold, fragile_eps, tuple(eps_values),
                                      str(result.summary_file)))
        if html_out is not None:
            from recapfast.io.atomic import write_text
            from recapfast.reporting.html_report import screen_html

            write_text(html_out, screen_html(screen_table.read_records(out), out, result.summary, size, threshold,
                                             fragile_eps, f"recapfast screen {data}"))
            typer.echo(f"HTML report: {html_out}")
    if result.summary["screened"] == 0:
        from recapfast.data.folder import DataError

        raise DataError(f"{data}: no file could be screened ({result.summary['records']} error record(s) in {out})"
                        if result.summary["records"] else f"{data}: no image files found")

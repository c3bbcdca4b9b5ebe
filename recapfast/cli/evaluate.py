"""recapfast eval DIR: clean accuracy and accuracy under FGSM/LLCM/iterative/APGD/Square attacks at each eps, the
worst case over attacks, detection metrics, gradient-masking checks, JPEG survival, and a UAP."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import (ExistingDir, QuantizeOpt, SizeOpt, TileOpt, app, check_new_file, progress_bar, resolve_device,
                   stderr_console, write_text_atomic)
from ._models import ATTACK_HELP, PgdSeedOpt
from ._options import BUDGET, DETECTOR, RUN, Options, grouped


@app.command("eval")
@grouped
def eval_command(
    data: ExistingDir,
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated eps in grey levels.")] = "1,2,3,4,5",
    attack: Annotated[str, typer.Option("--attack", help="Comma-separated attacks: " + ATTACK_HELP + ".")
    ] = "fgsm,llcm",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Iterations of the iterative attacks "
                                                 "(default: Kurakin's floor(min(eps+4, 1.25 eps)) per eps).")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", help="Step of the iterative attacks "
                                                       "in grey levels (default 1).")] = None,
    pgd_seed: PgdSeedOpt = 0,
    budget: Options = BUDGET,
    jpeg: Annotated[Optional[str], typer.Option("--jpeg", help="Also evaluate every image after a JPEG round trip at "
                                                "these qualities, e.g. 75,90 (Pillow).")] = None,
    uap: Annotated[Optional[Path], typer.Option("--uap", exists=True, dir_okay=False, readable=True,
                                                help="Also add this universal perturbation PNG (from `recapfast uap`) "
                                                     "to every patch: fooling rate and accuracy.")] = None,
    heatmap: Annotated[Optional[Path], typer.Option("--heatmap", file_okay=False, help="Also write a tile map of "
                                                    "P(recaptured) as a PNG heatmap per image with >= 2 tiles of "
                                                    "--size (mirrors DIR's tree) and heatmaps.json here.")] = None,
    metrics: Annotated[str, typer.Option("--metrics", help="Perturbation metrics per attack and eps: full "
                                         "(L-inf, L2, PSNR, SSIM), fast (no SSIM), none (accuracy only).")] = "full",
    detector: Options = DETECTOR,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON here.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write one CSV row per attack x eps.")] = None,
    md_out: Annotated[Optional[Path], typer.Option("--md", help="Also write the markdown tables here.")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="Also write one self-contained HTML report: "
                                                     "the tables, ROC curve, per-file rows, adversarial examples.")
                        ] = None,
    size: SizeOpt = 64,
    tile: TileOpt = False,
    quantize: QuantizeOpt = True,
    run: Options = RUN,
) -> None:
    """Evaluate a detector on a labelled folder, clean and under attack (the paper's Tables 1-3)."""
    from recapfast.data.folder import DataError, discover
    from recapfast.engine.evaluate import evaluate_folder
    from recapfast.attacks.iterative import IterativeConfig
    from recapfast.io.lock import lock_outputs
    from recapfast.metrics import METRIC_LEVELS
    from recapfast.validate import check_step_size, distinct_outputs, output_dir, output_outside
    from ._models import load_cli_model, parse_attack_eps, trust_config, weights_sha256

    if metrics not in METRIC_LEVELS:
        raise typer.BadParameter(f"{metrics!r}: choose from {', '.join(METRIC_LEVELS)}", param_hint="--metrics")
    attacks, eps_values = parse_attack_eps(attack, eps, quantize)
    step_size = check_step_size(step_size, quantize)
    trust = trust_config(budget, jpeg=jpeg,
                         cascade="auto" in [name.strip().lower() for name in attack.split(",")])
    iterative = IterativeConfig(steps=steps, step_size=step_size, seed=pgd_seed)
    universal = None
    if uap is not None:
        from recapfast.attacks.universal import load_uap

        universal = load_uap(uap)
    distinct_outputs(("--json", json_out), ("--csv", csv_out), ("--md", md_out), ("--html", html_out),
                     ("--heatmap", heatmap, {"index": heatmap / "heatmaps.json"} if heatmap is not None else {}))
    if heatmap is not None:
        output_outside(heatmap, "--heatmap", data)
        output_dir(heatmap, "--heatmap", run.force)
    for path, option in ((json_out, "--json"), (csv_out, "--csv"), (md_out, "--md"), (html_out, "--html")):
        check_new_file(path, run.force, option)
    from recapfast import distributed  # torchrun: shard the files, sum the counters; rank 0 prints and writes

    dist_info = distributed.init(resolve_device(run.device))
    quiet = run.quiet or not dist_info.is_main
    console = stderr_console(quiet)
    with lock_outputs(json_out, csv_out, md_out, html_out, heatmap):
        net = load_cli_model(detector, distributed.rank_device(resolve_device(run.device), dist_info), size)
        samples = discover(data)
        bar, advance = progress_bar(console, len(samples), f"eval {detector.model}")
        on_error = (lambda p, r: console.print(f"[yellow]skipped[/] {p}: {r}", markup=True, highlight=False))
        with bar:
            result = evaluate_folder(net, data, eps_values, attacks, size=size, tile=tile, batch_size=run.batch_size,
                                     workers=run.workers, quantize=quantize, model_name=detector.model,
                                     progress=advance,
                                     on_error=None if quiet else on_error, samples=samples, iterative=iterative,
                                     uap=universal, metrics=metrics, trust=trust)
        distributed.shutdown()
        if result.files == 0:
            first = f" (first: {result.errors[0]['path']}: {result.errors[0]['error']})" if result.errors else ""
            raise DataError(f"{data}: no file could be used; {len(result.errors)} skipped{first}")
        if not dist_info.is_main:
            return
        result.model_sha256 = weights_sha256(detector)
        for path, text in ((json_out, result.to_json), (csv_out, result.to_csv), (md_out, result.to_markdown)):
            if path is not None:
                write_text_atomic(path, text())
        typer.echo(result.to_markdown())
        if html_out is not None:
            from recapfast.reporting.html_eval import eval_html, per_file_pass

            device = distributed.rank_device(resolve_device(run.device), dist_info)
            extra = per_file_pass(net, samples, size, eps_values, device, batch=run.batch_size)
            write_text_atomic(html_out, eval_html(result.to_markdown(), extra,
                                                  f"recapfast eval {data} (model {detector.model})"))
            typer.echo(f"HTML report: {html_out}")
        if heatmap is not None:
            from recapfast.attacks.localize import check_output_dir, write_heatmaps

            check_output_dir(heatmap, run.force)
            bar, advance = progress_bar(console, len(samples), "heatmaps")
            with bar:
                records = write_heatmaps(net, samples, data, heatmap, size, progress=advance)
            _with_legends(records, size, heatmap)
            written = sum(r.heatmap is not None for r in records)
            typer.echo(f"wrote {written} heatmap(s) ({len(records) - written} image(s) with fewer than 2 tiles or "
                       f"unreadable) and {heatmap / 'heatmaps.json'}")


def _with_legends(records, size: int, out_dir: Path) -> None:
    """Each heatmap PNG again with the HTML report's colour scale, tile grid, hatched unscreened strip and a
    legend panel (the picture write_heatmaps makes has none)."""
    import numpy as np

    from recapfast.data.folder import decode
    from recapfast.io.atomic import write_file
    from recapfast.reporting.html_report import heatmap_figure
    from PIL import Image

    for rec in records:
        if rec.heatmap is None:
            continue
        img, _ = decode(rec.path)
        mean = float(np.mean(rec.probs))
        picture = Image.fromarray(heatmap_figure(img, rec.probs, size, 0.5, f"{Path(rec.path).name}: mean {mean:.3f}"))
        write_file(rec.heatmap, writer=lambda fh, pic=picture: pic.save(fh, format="PNG"), root=out_dir)

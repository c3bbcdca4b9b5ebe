"""recapfast demo: synthesize a small set, evaluate both bundled models under FGSM/LLCM, print the tables."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import SEED_MAX, DeviceOpt, QuietOpt, app, progress_bar, resolve_device, stderr_console


@app.command("demo")
def demo_command(
    folder: Annotated[Optional[Path], typer.Argument(help="Where to synthesize (default: a temporary folder).")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Images per class.")] = 200,
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Synthesis seed (the bundled models never saw it).")] = 2024,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """The main job on the bundled defaults: Tables 1-3 for the baseline and the robust model, each followed by a
    small worst-case check (FGSM + a reduced APGD + Square on the first patches of each class) and its masking
    verdict, so that a masked model's FGSM row is not read as robustness."""
    from recapfast.models.checkpoint import load_model
    from recapfast.engine.evaluate import evaluate_folder
    from recapfast.engine.quickcheck import QuickCheck, worst_case_check
    from recapfast.reporting.quickcheck import quickcheck_markdown
    from recapfast.data.synth_sets import synthesize     # generator v3, what the bundled models were trained on

    if folder is not None:
        from recapfast.validate import output_dir

        output_dir(folder, "FOLDER", force=True)     # created if missing; its parent must exist
    console = stderr_console(quiet)
    dev = resolve_device(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recapfast-demo-") as tmp:
        root = Path(folder) if folder is not None else Path(tmp) / "data"
        bar, advance = progress_bar(console, 2 * count, f"synthesizing {2 * count} images (64x64)")
        with bar:
            synthesize(root, size=64, count=count, seed=seed, progress=advance)
        typer.echo(f"# recapfast demo: {count} original + {count} recaptured synthetic 64x64 images ({root})\n")
        for name in ("baseline", "robust"):
            model = load_model(name, dev)
            bar, advance = progress_bar(console, 2 * count, f"evaluating {name}")
            with bar:
                result = evaluate_folder(model, root, (1, 2, 3, 4, 5), ("fgsm", "llcm"), size=64, model_name=name,
                                         progress=advance)
            typer.echo(result.to_markdown())
            check = QuickCheck(per_class=min(count, QuickCheck.per_class))
            bar, advance = progress_bar(console, 2 * check.per_class, f"worst-case check of {name}")
            with bar:
                quick = worst_case_check(model, root, check=check, model_name=name, progress=advance)
            typer.echo(quickcheck_markdown(quick, result.patches))
    typer.echo(f"demo finished in {time.perf_counter() - start:.1f} s")

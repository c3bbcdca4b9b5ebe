"""Options shared by the commands that load a detector or run apgd/square (eval, transfer, attack)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._app import SEED_MAX

WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", help="State dict (.safetensors) for a pkg.module:factory --model.")]
InputRangeOpt = Annotated[str, typer.Option(
    "--input-range", help="What a .pt2 or pkg.module:factory model takes: 255 (pixel units) or 1 ([0, 1]). eps "
                          "stays in grey levels.")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Per-channel mean the external model subtracts (in its input units, after --input-range), "
                   "e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std the external model divides by.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Also show what torch printed while loading a .pt2 "
                                           "--model (captured otherwise: a bad file is one line).")]
ApgdStepsOpt = Annotated[int, typer.Option("--apgd-steps", min=1, help="APGD iterations per eps and restart.")]
ApgdRestartsOpt = Annotated[int, typer.Option("--apgd-restarts", min=1, help="APGD random restarts.")]
SquareQueriesOpt = Annotated[int, typer.Option("--square-queries", min=1,
                                               help="Square Attack query budget per patch, eps and restart.")]
SquareRestartsOpt = Annotated[int, typer.Option("--square-restarts", min=1, help="Square Attack restarts.")]
AttackSeedOpt = Annotated[int, typer.Option("--attack-seed", min=0, max=SEED_MAX,
                                            help="Seed of APGD's starts and Square's draws.")]
PgdSeedOpt = Annotated[int, typer.Option("--pgd-seed", min=0, max=SEED_MAX, help="Seed of PGD's random start.")]

ATTACK_HELP = ("fgsm, llcm (one shared gradient for all eps), bim, illc, pgd, mifgsm, apgd (iterative, run per eps), "
               "square (black-box, logits only), auto (= fgsm,apgd,square)")


def convention(opts):
    """The checked input convention of --input-range, --mean, --std (``opts``: recapfast.cli._options.CONVENTION)."""
    from recapfast.models.pixels import InputConvention, parse_floats_list

    try:
        value = float(opts.input_range)
        conv = InputConvention(value, parse_floats_list(opts.mean, "--mean"), parse_floats_list(opts.std, "--std"))
        conv.validate()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--input-range/--mean/--std") from err
    return conv


def load_cli_model(detector, device, size: Optional[int] = None):
    """The --model (with --weights, --input-range, --mean, --std: recapfast.cli._options.DETECTOR) on ``device``;
    with ``size``, checked on two mid-grey patches of that size (runs on RGB, finite logits [B, 2]: one line
    otherwise, before any work)."""
    import torch

    from recapfast.models.pixels import check_logits
    from recapfast.models.zoo import load_detector

    net = load_detector(detector.model, device, detector.weights, convention(detector),
                        verbose=getattr(detector, "verbose", False))
    if size is not None:
        check_logits(net, torch.full((2, 3, size, size), 128.0, device=device), f"--model {detector.model}")
    return net


def model_label(detector) -> str:
    """--model as recorded in results: the spec, with --weights and a non-default input convention."""
    conv = convention(detector)
    parts = [detector.model] + ([f"weights {detector.weights}"] if detector.weights else []) + \
        ([conv.describe()] if not conv.is_pixels else [])
    return "; ".join(parts)


def parse_attack_names(text: str, allowed) -> list[str]:
    """--attack with 'auto' expanded (fgsm, apgd, square)."""
    from recapfast.engine.trust import expand_attacks
    from ._app import parse_attacks

    return expand_attacks(parse_attacks(text, tuple(allowed) + ("auto",)))


def parse_attack_eps(attack: str, eps: str, quantize: bool, auto: bool = True) -> tuple[list[str], list[float]]:
    """--attack (any attack recapfast runs; 'auto' too unless ``auto`` is False) and --eps checked against them."""
    from recapfast.attacks.iterative import ITERATIVE_ATTACKS
    from recapfast.attacks.single_step import ATTACKS
    from recapfast.engine.trust import EXTRA_ATTACKS
    from recapfast.validate import parse_eps
    from ._app import parse_attacks

    allowed = ATTACKS + ITERATIVE_ATTACKS + EXTRA_ATTACKS
    attacks = parse_attack_names(attack, allowed) if auto else parse_attacks(attack, allowed)
    return attacks, parse_eps(eps, "--eps", quantize, attacks)


def trust_config(budget, seed: Optional[int] = None, jpeg: Optional[str] = None, **kwargs):
    """APGD's and Square's settings from ``budget`` (recapfast.cli._options.BUDGET; ``seed`` replaces its
    --attack-seed), the --jpeg qualities, and any other TrustConfig field."""
    from recapfast.attacks.apgd import APGDConfig
    from recapfast.engine.jpeg import parse_qualities
    from recapfast.attacks.square import SquareConfig
    from recapfast.engine.trust import TrustConfig

    try:
        qualities = tuple(parse_qualities(jpeg)) if jpeg is not None else ()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--jpeg") from err
    seed = budget.attack_seed if seed is None else seed
    return TrustConfig(apgd=APGDConfig(budget.apgd_steps, budget.apgd_restarts, 0.75, seed),
                       square=SquareConfig(budget.square_queries, budget.square_restarts, 0.8, seed), jpeg=qualities,
                       **kwargs)


AnyModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundled model name (baseline, robust, paper), a .safetensors "
                                          "checkpoint, a torch.export .pt2 program, or pkg.module:factory.")]


def weights_sha256(detector) -> str | None:
    """sha256 of the file holding the --model's weights (bundled name, .safetensors, .pt2 or --weights), else None."""
    import os

    from recapfast.models.checkpoint import BUNDLED, WEIGHTS_DIR, resolve, sha256_of

    spec = str(detector.model)
    bundled = resolve(spec) if spec in BUNDLED else WEIGHTS_DIR / f"{spec}.safetensors"
    path = detector.weights or (bundled if "/" not in spec and "." not in spec and bundled.is_file() else spec)
    return sha256_of(path) if os.path.isfile(path) else None

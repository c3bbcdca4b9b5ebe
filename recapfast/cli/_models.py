"""Options shared by the commands that load a detector or run apgd/square (eval, transfer, attack)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", help="State dict (.safetensors) for a pkg.module:factory --model.")]
InputRangeOpt = Annotated[str, typer.Option(
    "--input-range", help="What a .pt2 or pkg.module:factory model takes: 255 (pixel units) or 1 ([0, 1]). eps "
                          "stays in grey levels.")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Per-channel mean the external model subtracts (in its input units, after --input-range), "
                   "e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std the external model divides by.")]
ApgdStepsOpt = Annotated[int, typer.Option("--apgd-steps", min=1, help="APGD iterations per eps and restart.")]
ApgdRestartsOpt = Annotated[int, typer.Option("--apgd-restarts", min=1, help="APGD random restarts.")]
SquareQueriesOpt = Annotated[int, typer.Option("--square-queries", min=1,
                                               help="Square Attack query budget per patch, eps and restart.")]
SquareRestartsOpt = Annotated[int, typer.Option("--square-restarts", min=1, help="Square Attack restarts.")]
AttackSeedOpt = Annotated[int, typer.Option("--attack-seed", help="Seed of APGD's starts and Square's draws.")]

ATTACK_HELP = ("fgsm, llcm (one shared gradient for all eps), bim, illc, pgd, mifgsm, apgd (iterative, run per eps), "
               "square (black-box, logits only), auto (= fgsm,apgd,square)")


def convention(input_range: str, mean: Optional[str], std: Optional[str]):
    from recapfast.models.pixels import InputConvention, parse_floats_list

    try:
        value = float(input_range)
        conv = InputConvention(value, parse_floats_list(mean, "--mean"), parse_floats_list(std, "--std"))
        conv.validate()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--input-range/--mean/--std") from err
    return conv


def load_cli_model(spec: str, device, weights: Optional[str], input_range: str = "255", mean: Optional[str] = None,
                   std: Optional[str] = None):
    from recapfast.models.zoo import load_detector

    return load_detector(spec, device, weights, convention(input_range, mean, std))


def parse_attack_names(text: str, allowed) -> list[str]:
    """--attack with 'auto' expanded (fgsm, apgd, square)."""
    from recapfast.engine.trust import expand_attacks
    from ._app import parse_attacks

    return expand_attacks(parse_attacks(text, tuple(allowed) + ("auto",)))


def trust_config(apgd_steps: int, apgd_restarts: int, square_queries: int, square_restarts: int, seed: int,
                 jpeg: Optional[str] = None, **kwargs):
    from recapfast.attacks.apgd import APGDConfig
    from recapfast.engine.jpeg import parse_qualities
    from recapfast.attacks.square import SquareConfig
    from recapfast.engine.trust import TrustConfig

    try:
        qualities = tuple(parse_qualities(jpeg)) if jpeg else ()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--jpeg") from err
    return TrustConfig(apgd=APGDConfig(apgd_steps, apgd_restarts, 0.75, seed),
                       square=SquareConfig(square_queries, square_restarts, 0.8, seed), jpeg=qualities, **kwargs)


AnyModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundled model name (baseline, robust), a .safetensors "
                                          "checkpoint, a torch.export .pt2 program, or pkg.module:factory.")]

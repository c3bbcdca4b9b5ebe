"""Option groups: options several commands share, declared once and expanded in place into each signature.

A command parameter whose default is a :class:`Group` stands for that group's options, at that place in the
command's option list (so ``--help`` lists them where they always stood); :func:`grouped` rewrites the
signature Typer reads and hands the command one namespace per group (``run.device``, ``budget.apgd_steps``).
"""
from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace
from typing import Any, Callable

from ._app import BatchOpt, DeviceOpt, ForceOpt, QuietOpt, WorkersOpt
from ._models import (AnyModelOpt, ApgdRestartsOpt, ApgdStepsOpt, AttackSeedOpt, InputRangeOpt, MeanOpt,
                      SquareQueriesOpt, SquareRestartsOpt, StdOpt, VerboseOpt, WeightsOpt)

Options = SimpleNamespace   # what a command receives for a group parameter


class Group:
    """Options in order: (parameter name, Annotated typer option, default)."""

    def __init__(self, *options: tuple[str, Any, Any]):
        self.options = options

    def __add__(self, other: "Group") -> "Group":
        return Group(*self.options, *other.options)

    def but(self, drop: tuple[str, ...] = (), **defaults) -> "Group":
        """This group without the options named in ``drop`` and with other ``defaults``."""
        unknown = (set(drop) | set(defaults)) - {name for name, _, _ in self.options}
        if unknown:
            raise ValueError(f"not options of this group: {', '.join(sorted(unknown))}")
        return Group(*((n, a, defaults.get(n, d)) for n, a, d in self.options if n not in drop))


def grouped(command: Callable) -> Callable:
    """``command`` with each :class:`Group` parameter expanded into its options (see the module docstring)."""
    signature = inspect.signature(command, eval_str=True)
    params, groups = [], {}
    for param in signature.parameters.values():
        if isinstance(param.default, Group):
            groups[param.name] = [name for name, _, _ in param.default.options]
            params.extend(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                            annotation=annotation)
                          for name, annotation, default in param.default.options)
        else:
            params.append(param)

    @functools.wraps(command)
    def run(**kwargs):
        for group, names in groups.items():
            kwargs[group] = Options(**{name: kwargs.pop(name) for name in names})
        return command(**kwargs)

    run.__signature__ = signature.replace(parameters=params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


# --device --batch-size --workers --force --quiet
RUN = Group(("device", DeviceOpt, "auto"), ("batch_size", BatchOpt, 64), ("workers", WorkersOpt, 0),
            ("force", ForceOpt, False), ("quiet", QuietOpt, False))
# APGD's and Square's budgets and seed (recapfast.cli._models.trust_config)
BUDGET = Group(("apgd_steps", ApgdStepsOpt, 100), ("apgd_restarts", ApgdRestartsOpt, 1),
               ("square_queries", SquareQueriesOpt, 1000), ("square_restarts", SquareRestartsOpt, 1),
               ("attack_seed", AttackSeedOpt, 0))
# What an external model takes (recapfast.cli._models.convention)
CONVENTION = Group(("input_range", InputRangeOpt, "255"), ("mean", MeanOpt, None), ("std", StdOpt, None))
# The detector: any model spec, its weights and input convention (recapfast.cli._models.load_cli_model)
DETECTOR = Group(("model", AnyModelOpt, "baseline"), ("weights", WeightsOpt, None)) + CONVENTION + \
    Group(("verbose", VerboseOpt, False))

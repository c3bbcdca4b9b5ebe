"""Argument validation shared by every command: eps, step sizes, xi, widths and output paths.

One rule set, one message style (``--option VALUE: why``), raised as :class:`ArgumentError`
(a UserError: exit code 1, one line).  Library code (ScreenConfig, the CLI commands) calls the
same functions, so ``eval``, ``attack``, ``screen``, ``transfer``, ``uap`` and ``train`` agree.

Perturbation sizes are grey levels on the 0..255 scale: finite, > 0 and <= 255.  On the uint8
grid (``--quantize``, the default; ``screen`` and ``attack`` always write uint8) an FGSM/LLCM
step smaller than 0.5 rounds back to the clean pixel, and an iterative attack's integer box
``[ceil(x - eps), floor(x + eps)]`` is the clean pixel itself for eps < 1, so such eps are refused
instead of silently perturbing nothing.  A UAP is an integer delta with ``|delta| <= floor(xi)``:
xi < 1 is no perturbation, and a PNG with offset 128 holds at most 127.

Output paths (one rule for every command): recapfast creates at most the LAST component of an
output path.  An output file's folder must exist; an output folder (``attack --out``,
``--heatmap``, ``synth OUT``, ``reproduce OUT``) is created when missing, but its parent must exist.
A mistyped path is an error, never a new tree of folders.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from recapfast.errors import UserError

MAX_EPS = 255.0
MAX_XI = 127.0
MAX_WIDTH = 4096
ITERATIVE = ("bim", "illc", "pgd", "mifgsm", "apgd", "square")   # attacks on the integer box [ceil(x-eps), floor(x+eps)]


class ArgumentError(UserError):
    """A command-line (or API) argument that cannot be used; the message names it."""


def number(value, option: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           integer: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (``lo_open``: (lo, hi]); names ``option`` otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{option} {value!r}: not a number") from None
    if not math.isfinite(v):
        raise ArgumentError(f"{option} {value!r}: must be a finite number")
    if integer and v != int(v):
        raise ArgumentError(f"{option} {value!r}: must be a whole number")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ArgumentError(f"{option} {value!r}: must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and v > hi:
        raise ArgumentError(f"{option} {value!r}: must be <= {hi:g}")
    return v


def parse_numbers(text: str, option: str) -> list[float]:
    """A comma-separated list of numbers (at least one)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise ArgumentError(f"{option} {text!r}: give one or more comma-separated numbers")
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise ArgumentError(f"{option} {text!r}: {p!r} is not a number") from None
    return values


def check_eps(values: Iterable[float], option: str = "--eps", quantize: bool = True,
              attacks: Sequence[str] = ()) -> list[float]:
    """Finite, > 0, <= 255, and (quantized) large enough to change a uint8 pixel; duplicates dropped."""
    iterative = [a for a in attacks if a in ITERATIVE]
    smallest = (1.0 if iterative else 0.5) if quantize else 0.0
    out: list[float] = []
    for v in values:
        v = number(v, option, 0.0, MAX_EPS, lo_open=True)
        if v < smallest:
            who = f"{', '.join(iterative)} (integer box [ceil(x-eps), floor(x+eps)])" if iterative else \
                "an FGSM/LLCM step"
            raise ArgumentError(f"{option} {v:g}: rounds to no change on the uint8 grid for {who}; "
                                f"use eps >= {smallest:g}" + (" or --no-quantize" if option == "--eps" else ""))
        if v not in out:
            out.append(v)
    return out


def parse_eps(text: str, option: str = "--eps", quantize: bool = True, attacks: Sequence[str] = ()) -> list[float]:
    return check_eps(parse_numbers(text, option), option, quantize, attacks)


def parse_probe_eps(text: str) -> list[float] | None:
    """``none`` (no probing: returns None) or probe eps (sorted).  0 is an error, not a synonym of none."""
    if str(text).strip().lower() == "none":
        return None
    return sorted(check_eps(parse_numbers(text, "--probe-eps"), "--probe-eps", quantize=True))


def check_step_size(step: float | None, quantize: bool = True, option: str = "--step-size") -> float | None:
    if step is None:
        return None
    v = number(step, option, 0.0, MAX_EPS, lo_open=True)
    if quantize and v < 0.5:
        raise ArgumentError(f"{option} {v:g}: rounds back onto the same uint8 value; use >= 0.5 or --no-quantize")
    return v


def check_xi(values: Iterable[float], option: str = "--xi") -> list[float]:
    out = []
    for v in values:
        v = number(v, option, 1.0, MAX_XI)
        if v not in out:
            out.append(v)
    return out


def parse_xi(text: str, option: str = "--xi", allow_empty: bool = False) -> list[float]:
    if allow_empty and not str(text).strip():
        return []
    try:
        return check_xi(parse_numbers(text, option), option)
    except ArgumentError as err:
        raise ArgumentError(f"{err} (xi: whole grey levels, 1..{MAX_XI:g})") from None


def check_widths(widths, option: str = "--widths", max_parameters: int | None = None) -> tuple[int, ...]:
    """Five integer conv widths in 1..4096 whose LaplacianCNN stays under ``max_parameters``."""
    from recapfast.io.checkpoint_check import MAX_PARAMETERS, parameter_count

    if isinstance(widths, str):
        try:
            widths = [int(w) for w in widths.split(",")]
        except ValueError:
            raise ArgumentError(f"{option} {widths!r}: give five comma-separated integers") from None
    if not isinstance(widths, (list, tuple)) or len(widths) != 5 or \
            not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        raise ArgumentError(f"{option} {widths!r}: give five integers")
    if not all(1 <= w <= MAX_WIDTH for w in widths):
        raise ArgumentError(f"{option} {list(widths)}: every width must be in 1..{MAX_WIDTH}")
    limit = MAX_PARAMETERS if max_parameters is None else max_parameters
    count = parameter_count(widths)
    if count > limit:
        raise ArgumentError(f"{option} {list(widths)}: {count} parameters, above the limit of {limit}")
    return tuple(widths)


def output_file(path: Path | None, option: str, force: bool = False, resume: bool = False,
                resumable: bool = False) -> None:
    """An output file: its folder exists, it is not a folder or symlink, and it is new unless --force/--resume."""
    if path is None:
        return
    path = Path(path)
    if path.is_symlink():
        raise ArgumentError(f"{option} {path}: is a symbolic link; recapfast writes only plain files")
    if path.is_dir():
        raise ArgumentError(f"{option} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise ArgumentError(f"{option} {path}: folder {parent} does not exist (recapfast creates only the last "
                            f"component of an output path)")
    if path.exists() and not (force or resume):
        hint = "use --resume to continue it, or --force to overwrite" if resumable else "use --force to overwrite"
        raise ArgumentError(f"{option} {path}: exists ({hint})")


def output_dir(path: Path, option: str, force: bool = False, resume: bool = False, resumable: bool = False) -> None:
    """An output folder: new or empty (unless --force/--resume), not a symlink, and its parent exists."""
    path = Path(path)
    if path.is_symlink():
        raise ArgumentError(f"{option} {path}: is a symbolic link; give a real folder")
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"{option} {path}: exists and is not a folder")
    if not path.exists():
        parent = path.parent
        if not parent.is_dir():
            raise ArgumentError(f"{option} {path}: folder {parent} does not exist (recapfast creates only the "
                                f"last component of an output path)")
        return
    if not (force or resume) and any(path.iterdir()):
        hint = "use --resume to continue it, or --force to write into it" if resumable else \
            "use --force to write into it"
        raise ArgumentError(f"{option} {path}: exists and is not empty ({hint})")


def output_outside(path: Path | None, option: str, data: Path) -> None:
    """An output folder of images must not lie in the input folder ``data`` (the next run would read them)."""
    if path is None:
        return
    out, root = Path(path).resolve(), Path(data).resolve()
    if out == root or root in out.parents:
        raise ArgumentError(f"{option} {path}: is inside the input folder {data}")


def distinct_outputs(*outputs: tuple) -> None:
    """No two outputs of one run are the same path, however spelt (resolved), counting the files an output
    implies: ``outputs`` are ``(option, path)`` or ``(option, path, {what: derived path})``; None paths are
    skipped.  Checked up front, so ``--out r.jsonl --csv r.jsonl`` never replaces the records with CSV."""
    seen: dict[Path, str] = {}
    for option, path, *derived in outputs:
        if path is None:
            continue
        for what, target in [("", path), *(derived[0].items() if derived else ())]:
            name = f"{option} {path}" if not what else f"the {what} of {option} {path} ({target})"
            key = Path(target).resolve()
            if key in seen:
                raise ArgumentError(f"{name} and {seen[key]} are the same file; give each output its own path")
            seen[key] = name


__all__ = ["ArgumentError", "check_eps", "check_step_size", "check_widths", "check_xi", "distinct_outputs", "number",
           "output_dir", "output_file", "output_outside", "parse_eps", "parse_numbers", "parse_probe_eps", "parse_xi"]

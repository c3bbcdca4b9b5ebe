"""The one Typer app, the exit-code policy and the option aliases every command shares.

Exit codes: 0 success; 1 user error (one line naming the bad argument or file); 2 internal error.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from recapfast.io.atomic import disk_error
from recapfast.errors import UserError, raised_by_every_rank

# Typer >= 0.2x vendors click (its exceptions derive from typer.TyperException); older ones use click.
_USAGE_ERRORS: tuple = tuple(t for t in (getattr(typer, "TyperException", None),) if t is not None)
try:
    import click as _click_mod

    _USAGE_ERRORS += (_click_mod.ClickException,)
    _ABORTS: tuple = (typer.Abort, _click_mod.Abort)
except ImportError:
    _ABORTS = (typer.Abort,)
_NO_ARGS: tuple = tuple(t for t in (getattr(getattr(getattr(typer, "_click", None), "exceptions", None),
                                            "NoArgsIsHelpError", None),
                                    getattr(getattr(sys.modules.get("click"), "exceptions", None),
                                            "NoArgsIsHelpError", None)) if t is not None)


def _flags_without_type() -> None:
    """Help shows boolean flags as flags: this Typer's rich help would print ``--force <bool>``."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_recapfast", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) or getattr(self, "count", False) else original(self, ctx)

    display_type_rich._recapfast = True
    TyperOption.display_type_rich = display_type_rich


try:
    _flags_without_type()
except (ImportError, AttributeError):  # pragma: no cover - another Typer layout: its own help rendering
    pass


def _say(line: str) -> None:
    """One line on stderr in one write: torchrun runs its ranks unbuffered, where ``print`` writes the text
    and the newline separately and two ranks' lines interleave into one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _exit_together(err: BaseException) -> None:
    """torchrun stops the other ranks as soon as one exits with an error: after an error every rank raised
    together has been printed, wait for all ranks, so none is stopped before its line is out."""
    if raised_by_every_rank(err):
        from recapfast import distributed

        distributed.shutdown()


class _Group(TyperGroup):
    """Runs commands non-standalone so every failure maps onto recapfast's exit codes."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as err:  # `recapfast` alone: the help (rich help is printed while it is built)
            text = err.format_message()
            if text.strip():
                print(text)
            sys.exit(0)
        except _USAGE_ERRORS as err:  # usage errors: bad option, missing argument, bad path
            ctx = getattr(err, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            _say(f"recapfast: error: {where}{err.format_message()}")
            sys.exit(1)
        except _ABORTS:
            _say("recapfast: aborted")
            sys.exit(1)
        except (UserError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
            mapped = disk_error(err, err.filename) if isinstance(err, OSError) and err.filename else None
            _say(f"recapfast: error: {mapped or err}")
            _exit_together(err)
            sys.exit(1)
        except OSError as err:  # disk full, read-only, quota: one line naming the path, exit 1
            mapped = disk_error(err, err.filename or "an output file")
            if mapped is None:
                traceback.print_exc(file=sys.stderr)
                _say(f"recapfast: internal error: {type(err).__name__}: {err}")
                sys.exit(2)
            _say(f"recapfast: error: {mapped}")
            sys.exit(1)
        except Exception as err:  # noqa: BLE001 - the last resort: report, exit 2
            traceback.print_exc(file=sys.stderr)
            _say(f"recapfast: internal error: {type(err).__name__}: {err}")
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="recapfast",
    help="Adversarial security of recaptured-image forensics CNNs: evaluate, attack, train, screen.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Op backend: auto (extension if it builds, else PyTorch), ext, torch. "
                          "Default: $RECAPFAST_BACKEND or auto.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="Torch intra-op threads. Default: $RECAPFAST_THREADS, else the cores the 1-minute "
                          "load average leaves free (at least 1); recorded in result files.")] = None,
) -> None:
    """recapfast command line."""
    if backend is not None:
        from recapfast import ops

        try:
            ops.set_backend(backend)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--backend") from err
    from recapfast import runtime

    try:
        runtime.apply_threads(threads)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--threads") from err


# Option aliases shared by the commands.
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (cuda when available).")]
# Upper bounds of the size options: a value past them is a typo (and 2**70 would overflow deep inside), one line.
MAX_BATCH, MAX_WORKERS, MAX_SIZE = 1 << 16, 256, 1 << 13
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=MAX_BATCH, help="Files per batch.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, max=MAX_WORKERS, help="DataLoader decode processes (0: in-process).")]
SEED_MAX = 2 ** 63 - 1   # torch.Generator.manual_seed and numpy take it; one range for every seed option
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Random seed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or log lines on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundled model name (baseline, robust, paper) or a .safetensors path.")]
SizeOpt = Annotated[int, typer.Option("--size", min=1, max=MAX_SIZE, help="Patch size in pixels (center crop, or tiles with --tile).")]
TileOpt = Annotated[bool, typer.Option("--tile", help="Use every non-overlapping patch instead of the center crop.")]
QuantizeOpt = Annotated[bool, typer.Option("--quantize/--no-quantize", help="Round adversarial images to uint8 (default).")]
ExistingDir = Annotated[Path, typer.Argument(exists=True, file_okay=False, dir_okay=True, readable=True,
                                             help="Folder of images (original/ and recaptured/ inside).")]


def resolve_device(name: str):
    import torch

    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise typer.BadParameter(f"{name!r} is not a device ({err})", param_hint="--device") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("cuda requested but torch sees no GPU", param_hint="--device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise typer.BadParameter(f"{name!r}: torch sees {torch.cuda.device_count()} GPU(s)", param_hint="--device")
    if device.type not in ("cpu", "cuda"):
        raise typer.BadParameter(f"{name!r}: recapfast runs on cpu, cuda, cuda:N or auto", param_hint="--device")
    return device




def parse_floats(text: str, option: str) -> list[float]:
    """Comma-separated finite, non-negative numbers (eps-like values go through recapfast.validate.parse_eps)."""
    from recapfast.validate import number, parse_numbers

    return [number(v, option, 0.0) for v in parse_numbers(text, option)]


def parse_attacks(text: str, allowed) -> list[str]:
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise typer.BadParameter(f"unknown attack(s) {', '.join(bad) or text!r}; choose from {', '.join(allowed)}",
                                 param_hint="--attack")
    return list(dict.fromkeys(names))


def check_new_file(path: Optional[Path], force: bool, option: str) -> None:
    """An output file: its folder exists, it is new unless --force (recapfast.validate's one rule)."""
    from recapfast.validate import output_file

    output_file(path, option, force)


def write_text_atomic(path: Path, text: str) -> None:
    from recapfast.io.atomic import write_text

    write_text(path, text)


from ._progress import progress_bar  # noqa: E402,F401 - re-exported for the commands


def stderr_console(quiet: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet)

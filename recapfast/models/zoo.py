"""Bring your own detector: every way ``--model`` names a model, loaded to a module that takes pixel units.

``--model`` accepts

- a bundled name (``baseline``, ``robust``; and ``bayar``, ``meso4`` when their weights are bundled),
- a recapfast checkpoint ``PATH.safetensors`` (+ ``PATH.json``) of any architecture in
  ``recapfast.models.archs`` (LaplacianCNN checkpoints go through ``recapfast.models.checkpoint.load_model``),
- a ``torch.export`` program ``PATH.pt2`` (``torch.export.save``), loaded with ``torch.export.load``,
- ``pkg.module:factory``: ``factory()`` is imported and called with no arguments and must return an
  ``nn.Module``; ``--weights W.safetensors`` then loads its state dict (strict; safetensors only).

The two external kinds take the input convention flags (:class:`recapfast.models.pixels.InputConvention`:
``--input-range 255|1``, ``--mean``/``--std``); the attacks keep working in pixel units and eps in
grey levels.  recapfast checkpoints always take pixel units.

What a ``.pt2`` runs: only the ATen graph recorded by ``torch.export`` (no Python from the model's
source; Python control flow was fixed at export time), with the weights saved in the archive.  What
loading it may run: ``torch.export.load`` unpickles the parts of the archive that torch could not store
as raw tensors (PyTorch's own warning: "uses pickle under the hood ... never load data from an
untrusted source") - treat a ``.pt2`` like code.  The program's train/eval state is the one it was
exported in (export it in eval mode); a program exported with a fixed batch size is run in chunks of
that size (zero-padded), and one exported for a fixed patch size needs that ``--size``.
``pkg.module:factory`` imports and runs the module's code: it is your own code.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from recapfast.errors import one_line
from recapfast.models.checkpoint import BUNDLED, WEIGHTS_DIR, config_path, load_model, read_config
from recapfast.io.checkpoint_check import MAX_WIDTH, CheckpointError, check_finite, check_tensors_match, read_header
from recapfast.models.pixels import InputAdapter, InputConvention, two_class_logits

ZOO_BUNDLED = ("bayar", "meso4")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def describe_kinds() -> str:
    return ("a bundled name (" + ", ".join(BUNDLED + available_zoo()) + "), a .safetensors checkpoint, a "
            "torch.export .pt2 program, or pkg.module:factory")


def available_zoo() -> tuple:
    return tuple(n for n in ZOO_BUNDLED if (WEIGHTS_DIR / f"{n}.safetensors").is_file())


def kind_of(spec: str) -> str:
    if spec in BUNDLED or spec in ZOO_BUNDLED or spec.endswith(".safetensors"):
        return "checkpoint"
    if spec.endswith(".pt2"):
        return "export"
    if _FACTORY.match(spec) and not os.path.exists(spec):
        return "factory"
    raise CheckpointError(f"--model {spec}: not {describe_kinds()}")


class ExportedDetector(nn.Module):
    """A ``torch.export`` program as a module: train()/eval() do not reach the (fixed) graph."""

    def __init__(self, program: nn.Module, batch: int | None, spatial: tuple | None, source: str):
        super().__init__()
        self.program, self.batch, self.spatial, self.source = program, batch, spatial, source

    def train(self, mode: bool = True):
        self.training = mode        # the exported graph keeps the mode it was exported in
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial is not None and tuple(x.shape[-2:]) != self.spatial:
            raise CheckpointError(f"{self.source}: the program was exported for {self.spatial[0]}x{self.spatial[1]} "
                                  f"inputs, got {x.shape[-2]}x{x.shape[-1]} (use --size {self.spatial[0]})")
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        outs = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i:i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(two_class_logits(self.program(chunk))[:n])
        return torch.cat(outs)


def _static_shape(program) -> tuple[int | None, tuple | None]:
    """(static batch size or None, static (H, W) or None) of the program's first user input."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            if val is None or val.dim() != 4:
                return None, None
            dims = [d if isinstance(d, int) else None for d in val.shape]
            spatial = (dims[2], dims[3]) if dims[2] is not None and dims[3] is not None else None
            return dims[0], spatial
    return None, None


@contextlib.contextmanager
def captured_torch_output(sink: list):
    """Everything torch says while the block runs - its loggers (torch.export logs a whole traceback on a bad
    archive), Python warnings, ``sys.stderr`` and file descriptor 2 (C++ messages) - goes into ``sink`` (one
    string) instead of the terminal: the user sees recapfast's one line, and the text with ``--verbose``."""
    import io
    import logging
    import tempfile
    import warnings

    text = io.StringIO()
    capture = logging.StreamHandler(text)
    loggers = [lg for name, lg in list(logging.root.manager.loggerDict.items())
               if name.split(".")[0] == "torch" and isinstance(lg, logging.Logger) and lg.handlers]
    saved = [(lg, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers = [capture if isinstance(h, logging.StreamHandler) else h for h in lg.handlers]
    old_stderr = sys.stderr
    for stream in {id(s): s for s in (old_stderr, sys.__stderr__) if s is not None}.values():
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    with tempfile.TemporaryFile() as fd_sink:
        saved_fd = os.dup(2)
        os.dup2(fd_sink.fileno(), 2)
        sys.stderr = text
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            for stream in (sys.__stderr__,):
                try:
                    stream.flush()
                except (OSError, ValueError, AttributeError):
                    pass
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.stderr = old_stderr
            for lg, handlers in saved:
                lg.handlers = handlers
            fd_sink.seek(0)
            said = fd_sink.read().decode("utf-8", "replace") + text.getvalue()
            said += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
            sink.append(said)


def load_exported(path: str | os.PathLike, verbose: bool = False) -> ExportedDetector:
    """A .pt2 program; torch's own messages while loading are captured (:func:`captured_torch_output`) and shown
    on stderr only with ``verbose``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such program")
    said: list = []
    try:
        with captured_torch_output(said):
            program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 - any failure of a foreign file is the user's file's problem
        raise CheckpointError(f"{path}: not a torch.export program ({one_line(err)})") from err
    finally:
        if verbose and said and said[0].strip():
            sys.stderr.write(f"recapfast: torch said while loading {path}:\n{said[0].rstrip()}\n")
    batch, spatial = _static_shape(program)
    return ExportedDetector(program.module(), batch, spatial, str(path))


def _working_directory_on_path() -> None:
    """Put the working directory first on ``sys.path`` (as uvicorn and gunicorn do), so ``mypkg.nets:make`` run from
    the folder that holds ``mypkg`` imports it without PYTHONPATH.  Importing runs that code: treat it like code."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_factory(spec: str, weights: str | os.PathLike | None) -> nn.Module:
    module_name, attr = spec.split(":")
    _working_directory_on_path()
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"--model {spec}: cannot import it ({err})") from err
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the module's own code failed (syntax, a raise at import)
        raise CheckpointError(f"--model {spec}: importing {module_name} failed ({one_line(err)})") from err
    try:
        model = factory()
    except Exception as err:  # noqa: BLE001 - the user's factory failing is the user's error, reported in one line
        raise CheckpointError(f"--model {spec}: calling {attr}() failed ({one_line(err)})") from err
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        if not str(weights).endswith(".safetensors") or not Path(weights).is_file():
            raise CheckpointError(f"--weights {weights}: give an existing .safetensors file")
        _load_state(model, Path(weights), f"--weights {weights}", spec)
    return model


def _load_state(model: nn.Module, weights: Path, where: str, what: str) -> None:
    """Strictly load a safetensors state dict into ``model``; every failure is a one-line CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{where}: not a valid safetensors file ({err})") from err
    check_finite(state, where)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{where}: weights do not fit {what} ({str(err).strip().splitlines()[0]})") from err


def checkpoint_path(spec: str) -> Path:
    return WEIGHTS_DIR / f"{spec}.safetensors" if spec in ZOO_BUNDLED else Path(spec)


def load_recapfast(spec: str, device="cpu") -> nn.Module:
    """A recapfast checkpoint of any architecture: LaplacianCNN through ``checkpoint.load_model``; the others with
    the same checks (``recapfast.io.checkpoint_check``: config, header, shapes and dtypes before loading, finite values)."""
    if spec in BUNDLED:
        return load_model(spec, device)
    weights = checkpoint_path(spec)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such checkpoint")
    config = read_config(weights)
    model_cfg = config.get("model") if isinstance(config, dict) else None
    arch = model_cfg.get("arch", "LaplacianCNN") if isinstance(model_cfg, dict) else "LaplacianCNN"
    if arch == "LaplacianCNN":
        return load_model(weights, device)
    from recapfast.models.archs import CONFIG_NAMES, build

    widths = model_cfg.get("widths")
    if arch not in CONFIG_NAMES or not isinstance(widths, list) or \
            not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths):
        raise CheckpointError(f"{config_path(weights)}: model {arch!r} with widths {widths!r} is not a recapfast "
                              f"architecture with widths in 1..{MAX_WIDTH}")
    try:
        model = build(arch, widths, int(model_cfg.get("num_classes", 2)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path(weights)}: bad model config ({err})") from err
    tensors, _ = read_header(weights)
    check_tensors_match(tensors, {k: tuple(v.shape) for k, v in model.state_dict().items()}, weights)
    _load_state(model, weights, str(weights), "the config's architecture")
    return model.to(device).eval()


def load_detector(spec: str, device="cpu", weights=None, convention: InputConvention | None = None,
                  verbose: bool = False) -> nn.Module:
    """Any ``--model`` spec as an eval-mode module on ``device`` taking pixel units (see the module docstring);
    ``verbose``: show what torch printed while loading a .pt2 (captured otherwise)."""
    spec = str(spec)
    convention = convention or InputConvention()
    try:
        convention.validate()
    except ValueError as err:
        raise CheckpointError(f"--input-range/--mean/--std: {err}") from err
    kind = kind_of(spec)
    if weights is not None and kind != "factory":
        raise CheckpointError(f"--weights is for pkg.module:factory models; {spec} carries its own weights")
    if kind == "checkpoint":
        if not convention.is_pixels:
            raise CheckpointError(f"--model {spec}: recapfast checkpoints take pixel units; --input-range/--mean/--std "
                                  "are for .pt2 and pkg.module:factory models")
        return load_recapfast(spec, device)
    model = load_exported(spec, verbose) if kind == "export" else load_factory(spec, weights)
    return InputAdapter(model, convention).to(device).eval()


def save_model(model: nn.Module, path, extra: dict | None = None) -> Path:
    """Any recapfast architecture as PATH.safetensors (config embedded) + PATH.json: ``save_checkpoint``."""
    from recapfast.models.checkpoint import save_checkpoint

    return save_checkpoint(model, path, extra)


__all__ = ["ZOO_BUNDLED", "ExportedDetector", "load_detector", "load_exported", "load_factory", "load_recapfast",
           "save_model", "kind_of", "available_zoo"]

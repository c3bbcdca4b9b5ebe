"""Checkpoint validation BEFORE anything is allocated: config schema, safetensors header, dtypes, values.

Reusable by every loader (LaplacianCNN checkpoints here; other model formats can call the same
pieces):

- :func:`check_config` — the JSON config is an object whose ``model`` holds five integer widths
  in 1..4096, ``num_classes`` 2 (if given), and a LaplacianCNN of those widths has at most
  :data:`MAX_PARAMETERS` parameters (computed from the widths, nothing built);
- :func:`read_header` — the safetensors header is read with bounded size, its JSON parsed, and
  every tensor's dtype, shape and byte range checked against the file size;
- :func:`check_tensors_match` — the header's tensor names and shapes are exactly the expected
  ones and every floating tensor is float32/float16/bfloat16 (``num_batches_tracked`` int64), so
  loading allocates exactly what the architecture needs and no integer weights load silently;
- :func:`check_finite` — after loading, every floating tensor is finite (no NaN/Inf).

Each failure is one CheckpointError line naming the file (exit code 1).
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

from recapfast.errors import UserError

MAX_WIDTH = 4096
MAX_PARAMETERS = 16 * 1024 * 1024          # 64 MB of float32; the default model has 0.1 M
MAX_HEADER_BYTES = 16 << 20                # ~3 KB of tensors + the embedded config (training history)
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
INDEX_DTYPES = {"I64": 8}                  # BatchNorm's num_batches_tracked only
ALL_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(UserError):
    """A checkpoint that is missing, malformed or does not fit the architecture."""


def expected_shapes(widths: Sequence[int], num_classes: int = 2) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of ``LaplacianCNN(widths, num_classes)``, computed without building it."""
    shapes: dict[str, tuple[int, ...]] = {}
    cin = 3
    for i, cout in enumerate(widths):
        p = f"units.{i}."
        shapes[p + "conv.weight"] = (cout, cin, 3, 3)
        shapes[p + "conv.bias"] = (cout,)
        for name in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            shapes[p + name] = (cout,)
        shapes[p + "bn.num_batches_tracked"] = ()
        cin = cout
    shapes["fc.weight"] = (num_classes, cin)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def parameter_count(widths: Sequence[int], num_classes: int = 2) -> int:
    return sum(math.prod(s) for k, s in expected_shapes(widths, num_classes).items()
               if not k.endswith("num_batches_tracked"))


def check_config(config, where) -> tuple[int, ...]:
    """The widths of a valid LaplacianCNN config (``{"model": {"widths": [...]}, ...}``)."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: config must be a JSON object, got {type(config).__name__}")
    model = config.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{where}: config has no \"model\" object")
    arch = model.get("arch", "LaplacianCNN")
    if arch != "LaplacianCNN":
        raise CheckpointError(f"{where}: model.arch {arch!r} is not LaplacianCNN")
    widths = model.get("widths")
    if not isinstance(widths, list) or len(widths) != 5 or \
            not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        raise CheckpointError(f"{where}: model.widths must be a list of five integers, got {widths!r}"[:300])
    if not all(1 <= w <= MAX_WIDTH for w in widths):
        raise CheckpointError(f"{where}: model.widths {widths} must each be in 1..{MAX_WIDTH}")
    classes = model.get("num_classes", 2)
    if classes != 2 or isinstance(classes, bool):
        raise CheckpointError(f"{where}: model.num_classes must be 2 (original, recaptured), got {classes!r}")
    count = parameter_count(widths)
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: model.widths {widths} give {count} parameters, above the limit of "
                              f"{MAX_PARAMETERS}")
    return tuple(widths)


def read_header(path) -> tuple[dict, dict]:
    """(tensors {name: {"dtype", "shape", "data_offsets"}}, metadata) of a safetensors file, checked."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a valid safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path}: not a valid safetensors file (header length {n} for a "
                                      f"{size}-byte file)")
            raw = fh.read(n)
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err.strerror or err})") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a valid safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise CheckpointError(f"{path}: not a valid safetensors file (metadata is not a string map)")
    data_size = size - 8 - n
    end_max = 0
    for name, info in header.items():
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: tensor {name!r} has no description")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in ALL_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d
                                                  for d in shape) or len(shape) > 8:
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}"[:300])
        if not isinstance(offsets, list) or len(offsets) != 2 or \
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            raise CheckpointError(f"{path}: tensor {name!r} has invalid data offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * ALL_DTYPES[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype} {shape}) does not fit its byte range "
                                  f"{offsets} of a {data_size}-byte data section (truncated or tampered)")
        end_max = max(end_max, end)
    if end_max != data_size:
        raise CheckpointError(f"{path}: {data_size - end_max} bytes after the last tensor (tampered?)")
    return header, metadata


def check_tensors_match(tensors: Mapping[str, dict], shapes: Mapping[str, tuple], where) -> None:
    """Exactly the expected names and shapes; float32/float16/bfloat16 weights (int64 step counters)."""
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing or extra:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
               ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:3])}" if extra else "")
        raise CheckpointError(f"{where}: weights do not fit the config's architecture ({what})")
    for name, info in tensors.items():
        if tuple(info["shape"]) != tuple(shapes[name]):
            raise CheckpointError(f"{where}: weights do not fit the config's architecture ({name} is "
                                  f"{list(info['shape'])}, the config needs {list(shapes[name])})")
        allowed = INDEX_DTYPES if name.endswith("num_batches_tracked") else FLOAT_DTYPES
        if info["dtype"] not in allowed:
            raise CheckpointError(f"{where}: tensor {name} is {info['dtype']}; weights must be "
                                  f"{'/'.join(allowed)}")


def check_finite(state: Mapping, where) -> None:
    import torch

    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{where}: tensor {name} holds {bad} NaN/Inf value(s)")


__all__ = ["CheckpointError", "MAX_PARAMETERS", "MAX_WIDTH", "check_config", "check_finite", "check_tensors_match",
           "expected_shapes", "parameter_count", "read_header"]

"""Checkpoints: safetensors weights + a JSON config beside them (never pickles).

``PATH.safetensors`` carries its own config (the exact text of ``PATH.json``, and its sha256) in
the safetensors metadata, so the weights file alone is one atomic, self-describing unit: a crash
between writing the two files (weights first, then the JSON) can leave a stale JSON beside new
weights, which the loader detects and refuses (delete the JSON to use the stored copy) instead of
building a model from a config that does not belong to the weights.  Checkpoints written before
the config was embedded (the bundled ones) load from the JSON alone.

Everything is validated before anything is allocated (recapfast.io.checkpoint_check): config
schema and size, safetensors header, tensor names/shapes/dtypes; then the values are finite.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from recapfast.io import atomic
from recapfast.io.checkpoint_check import (CheckpointError, check_config, check_finite, check_tensors_match, expected_shapes,
                               read_header)
from recapfast.models.laplacian import ACTIVATIONS, LaplacianCNN

BUNDLED = ("baseline", "robust", "paper")
# bundled name -> weights file (recapfast/weights/<file>.safetensors).  `paper` is Zhao et al.'s eq. 5-7 model, the
# reproduction of the paper; `robust` names the recommended defence.  They are the same weights while no defence of
# docs/robustness/frontier.md does better than the paper's on its test set (none does yet; docs/robustness.md says why)
BUNDLED_FILES = {"baseline": "baseline", "robust": "robust", "paper": "robust"}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CONFIG_KEY, CONFIG_SHA_KEY = "recapfast.config", "recapfast.config_sha256"
MAX_CONFIG_BYTES = 16 << 20


def config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A bundled name ('baseline', 'robust', 'paper') or a path to a .safetensors file."""
    text = str(name_or_path)
    if text in BUNDLED:
        return WEIGHTS_DIR / f"{BUNDLED_FILES[text]}.safetensors"
    path = Path(text)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{text}: a model is a bundled name ({', '.join(BUNDLED)}) or a .safetensors file")
    return path


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write PATH (.safetensors, config embedded) and then PATH.json, each atomically (recapfast.io.atomic).

    ``model``: any recapfast architecture (``model.config()`` names it: LaplacianCNN, BayarCNN, MesoNet4);
    the header's ``arch`` is that name.  A crash between the two writes leaves new weights beside the old
    JSON, which :func:`read_config` refuses (the pair never loads mismatched).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoint files end in .safetensors")
    config = model.config()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = json.dumps({"model": config, **(extra or {})}, indent=2, sort_keys=True)
    metadata = {"format": "recapfast", "arch": str(config.get("arch", "LaplacianCNN")), CONFIG_KEY: text,
                CONFIG_SHA_KEY: hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic.write_file(path, save(state, metadata=metadata))
    atomic.write_text(config_path(path), text)
    return path


def _read_json_file(cfg: Path) -> bytes:
    try:
        with open(cfg, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise CheckpointError(f"{cfg}: unreadable config ({err.strerror or err})") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{cfg}: config larger than {MAX_CONFIG_BYTES} bytes")
    return raw


def _parse(raw: bytes | str, where):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{where}: unreadable config ({err})") from None


def read_config(path: str | os.PathLike) -> dict:
    """The checkpoint's config: the copy stored in the weights, checked against PATH.json (or the JSON alone)."""
    weights = resolve(path)
    cfg = config_path(weights)
    metadata = read_header(weights)[1] if weights.is_file() else {}
    stored = metadata.get(CONFIG_KEY)
    if stored is None:
        if not cfg.is_file():
            raise CheckpointError(f"{cfg}: config file missing (every checkpoint is PATH.safetensors + PATH.json)")
        return _parse(_read_json_file(cfg), cfg)
    if hashlib.sha256(stored.encode("utf-8")).hexdigest() != metadata.get(CONFIG_SHA_KEY):
        raise CheckpointError(f"{weights}: the config stored in the weights does not match its sha256 (tampered)")
    if cfg.is_file() and _read_json_file(cfg) != stored.encode("utf-8"):
        raise CheckpointError(f"{cfg}: config and weights do not fit together ({cfg.name} differs from the config "
                              f"stored in {weights.name}: edited, or a crash between the two writes; delete "
                              f"{cfg.name} to use the stored copy)")
    return _parse(stored, weights)


def load_model(name_or_path: str | os.PathLike = "baseline", device: str | torch.device = "cpu") -> LaplacianCNN:
    """The detector in eval mode, from a bundled name or a .safetensors path (+ its .json config).

    Validation order: header and config first (nothing allocated), then the weights are read
    (exactly the sizes the architecture needs) and checked finite, then the model is built.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = resolve(name_or_path)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such checkpoint")
    tensors, _ = read_header(weights)
    config = read_config(weights)
    widths = check_config(config, config_path(weights))
    activation = config["model"].get("activation", "relu")      # checkpoints before --activation: ReLU
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise CheckpointError(f"{config_path(weights)}: model.activation {activation!r} is not one of "
                              f"{', '.join(ACTIVATIONS)}"[:300])
    check_tensors_match(tensors, expected_shapes(widths), weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({err})") from err
    check_finite(state, weights)
    model = LaplacianCNN(widths=widths, activation=activation)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{weights}: weights do not fit the config's architecture ({first})") from err
    return model.to(device).eval()


__all__ = ["BUNDLED", "BUNDLED_FILES", "CheckpointError", "config_path", "load_model", "read_config", "resolve", "save_checkpoint"]


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(name_or_path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights file (a bundled name or a .safetensors path): ties a measurement to it."""
    return sha256_of(resolve(name_or_path))

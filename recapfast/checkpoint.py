"""Checkpoints: safetensors weights + a JSON config beside them (never pickles)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import UserError
from .model import LaplacianCNN

BUNDLED = ("baseline", "robust")
WEIGHTS_DIR = Path(__file__).with_name("weights")


class CheckpointError(UserError):
    """A checkpoint that is missing, malformed or does not fit the architecture."""


def config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A bundled name ('baseline', 'robust') or a path to a .safetensors file."""
    text = str(name_or_path)
    if text in BUNDLED:
        return WEIGHTS_DIR / f"{text}.safetensors"
    path = Path(text)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{text}: a model is a bundled name ({', '.join(BUNDLED)}) or a .safetensors file")
    return path


def save_checkpoint(model: LaplacianCNN, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write PATH (.safetensors) and PATH.json atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoint files end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"model": model.config(), **(extra or {})}
    tmp_w = path.with_name(path.name + ".tmp")
    tmp_c = config_path(path).with_name(config_path(path).name + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": "recapfast", "arch": "LaplacianCNN"})
    tmp_c.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp_w, path)
    os.replace(tmp_c, config_path(path))
    return path


def read_config(path: str | os.PathLike) -> dict:
    weights = resolve(path)
    cfg = config_path(weights)
    if not cfg.is_file():
        raise CheckpointError(f"{cfg}: config file missing (every checkpoint is PATH.safetensors + PATH.json)")
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{cfg}: unreadable config ({err})") from err


def load_model(name_or_path: str | os.PathLike = "baseline", device: str | torch.device = "cpu") -> LaplacianCNN:
    """The detector in eval mode, from a bundled name or a .safetensors path (+ its .json config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = resolve(name_or_path)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such checkpoint")
    config = read_config(weights)
    widths = config.get("model", {}).get("widths")
    if not isinstance(widths, list) or len(widths) != 5:
        raise CheckpointError(f"{config_path(weights)}: config has no valid model.widths")
    model = LaplacianCNN(widths=widths)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({err})") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{weights}: weights do not fit the config's architecture ({first})") from err
    return model.to(device).eval()

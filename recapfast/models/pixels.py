"""Pixel units at the API boundary: the [0, 1] guard of ``rf.fgsm`` & co. and the input-convention adapter.

recapfast's attacks work in pixel units: images in [0, 255], eps in grey levels.  Two things keep
users in that frame:

- :func:`check_pixel_range`: a float batch that is evidently in [0, 1] (max <= 1 and not all zero)
  is rejected with a one-line message instead of being attacked as a nearly black image (an eps of 2
  grey levels would then move a [0, 1] image by 2, i.e. 200%, and return values up to 3).  Pass
  ``input_range=255`` for genuinely dark pixel-unit images, or ``input_range=1`` to attack [0, 1]
  images of a model that takes [0, 1]: the attack then runs in pixel units on ``x * 255`` against
  the model behind a /255 adapter, and the result comes back in [0, 1].  uint8 input is never checked.
- :class:`InputAdapter`: wraps a detector trained on [0, 1] or normalized input so it takes pixel
  units: ``model(((x / 255 if input_range == 1 else x) - mean) / std)``.  A model with one output
  (a sigmoid detector) is read as logits ``[0, z]`` (so softmax gives ``[1 - sigmoid(z), sigmoid(z)]``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
import torch
from torch import nn

from recapfast.errors import UserError, one_line


@dataclass(frozen=True)
class InputConvention:
    """How a model wants its input: range 255 (pixel units) or 1, then (x - mean) / std per channel."""

    input_range: float = 255.0
    mean: tuple | None = None
    std: tuple | None = None

    def validate(self) -> None:
        if self.input_range not in (1.0, 255.0):
            raise ValueError(f"input range must be 255 or 1, got {self.input_range:g}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None:
            if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
                raise ValueError("mean and std take 1 or 3 values (one per RGB channel)")
            if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
                raise ValueError(f"mean and std must be finite numbers, got {list(self.mean)} and {list(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std values must be > 0, got {list(self.std)}")

    @property
    def is_pixels(self) -> bool:
        return self.input_range == 255.0 and self.mean is None

    def describe(self) -> str:
        text = f"input range [0, {self.input_range:g}]"
        if self.mean is not None:
            text += f", normalized with mean {list(self.mean)} and std {list(self.std)}"
        return text


def parse_floats_list(text: str | None, option: str) -> tuple | None:
    if text is None or not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} {text!r}: every value must be a finite number")
    return values


class InputAdapter(nn.Module):
    """A detector behind the input-convention conversion: it takes pixel units [0, 255], like every recapfast model."""

    def __init__(self, model: nn.Module, convention: InputConvention):
        super().__init__()
        convention.validate()
        self.model = model
        self.convention = convention
        shape = (1, -1, 1, 1)
        mean = torch.tensor(convention.mean if convention.mean is not None else (0.0,), dtype=torch.float32)
        std = torch.tensor(convention.std if convention.std is not None else (1.0,), dtype=torch.float32)
        self.register_buffer("mean", mean.view(shape), persistent=False)
        self.register_buffer("std", std.view(shape), persistent=False)
        self.scale = 1.0 / 255.0 if convention.input_range == 1.0 else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        if self.convention.mean is not None:
            x = (x - self.mean) / self.std
        return two_class_logits(self.model(x))


def two_class_logits(out: torch.Tensor) -> torch.Tensor:
    """Logits [B, 2] as they are; one output z per image becomes [0, z]; anything else is an error."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not torch.is_tensor(out):
        raise ValueError(f"the detector returned {type(out).__name__}, not a tensor; recapfast needs logits [B, 2] "
                         "(class 0 original, 1 recaptured) or one logit [B, 1] for 'recaptured'")
    if out.dim() == 1:
        out = out.unsqueeze(1)
    if out.dim() != 2 or out.shape[1] not in (1, 2):
        raise ValueError(f"the detector returned shape {tuple(out.shape)}; recapfast needs logits [B, 2] "
                         "(class 0 original, 1 recaptured) or one logit [B, 1] for 'recaptured'")
    if out.shape[1] == 1:
        return torch.cat([torch.zeros_like(out), out], dim=1)
    return out


class ModelOutputError(UserError):
    """A detector that cannot run on recapfast's input or returns unusable logits (checked on the first batch)."""


def check_logits(model: nn.Module, x: torch.Tensor, what: str, classes: int = 2) -> None:
    """One forward of ``x`` (a first batch, pixel units): the model must run on [B, 3, H, W] and return finite
    logits [B, ``classes``]; otherwise one :class:`ModelOutputError` naming ``what``."""
    shape = "x".join(str(d) for d in x.shape)
    training = model.training
    try:
        model.eval()                     # never touches BatchNorm statistics
        with torch.no_grad():
            out = model(x.to(torch.float32))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's model failing on our input is the user's error
        raise ModelOutputError(f"{what}: fails on a {shape} batch of RGB pixel-unit patches ({one_line(err)})") \
            from err
    finally:
        model.train(training)
    if not torch.is_tensor(out) or tuple(out.shape) != (x.shape[0], classes):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ModelOutputError(f"{what}: returned {got} for a {shape} batch; recapfast needs logits "
                               f"[B, {classes}] (or one logit [B, 1] for 'recaptured')")
    if not bool(torch.isfinite(out).all()):
        raise ModelOutputError(f"{what}: returned non-finite logits (NaN or Inf) on the first batch ({shape})")


def check_pixel_range(x: torch.Tensor, input_range: float | None = None, what: str = "x") -> None:
    """Reject float ``x`` evidently in [0, 1] (0 < max <= 1) unless ``input_range`` says what it is."""
    if input_range is not None or not torch.is_tensor(x) or not x.is_floating_point() or x.numel() == 0:
        return
    top = float(x.detach().amax())
    if 0.0 < top <= 1.0:
        raise ValueError(f"{what} looks like [0, 1] images (max {top:.4g}); recapfast attacks work in pixel units "
                         f"[0, 255]: pass {what} * 255, or input_range=1 for [0, 1] images and a [0, 1] model, or "
                         "input_range=255 if these really are dark pixel-unit images")


def pixel_api(fn):
    """Wrap an attack ``fn(model, x, y, eps, ...)`` with the [0, 1] guard and the ``input_range`` keyword."""

    @functools.wraps(fn)
    def wrapper(model, x, *args, input_range: float | None = None, **kwargs):
        check_pixel_range(x, input_range)
        if input_range is None or float(input_range) == 255.0:
            return fn(model, x, *args, **kwargs)
        if float(input_range) != 1.0:
            raise ValueError(f"input_range must be 255 or 1, got {input_range}")
        adapted = InputAdapter(model, InputConvention(input_range=1.0))
        out = fn(adapted, x.to(torch.float32) * 255.0, *args, **kwargs)
        return _rescale(out)

    wrapper.__doc__ = (fn.__doc__ or "") + (
        "\n\n    Float input evidently in [0, 1] is rejected unless ``input_range`` is given (255: pixel units; "
        "1: [0, 1] images and model, result in [0, 1]).")
    return wrapper


def _rescale(out):
    if isinstance(out, torch.Tensor):
        return out.to(torch.float32) / 255.0
    # a SweepResult (attacks.single_step, a layer above): its adversarial images come back in [0, 1]
    out.images = {k: v.to(torch.float32) / 255.0 for k, v in out.images.items()}
    return out


__all__ = ["InputConvention", "InputAdapter", "two_class_logits", "check_logits", "ModelOutputError",
           "check_pixel_range", "pixel_api", "parse_floats_list"]

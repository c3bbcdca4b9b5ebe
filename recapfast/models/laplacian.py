"""Yang et al.'s LaplacianCNN recaptured-image detector (Zhao et al. 2018, section 2)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from recapfast import ops

# Default channel widths of the five conv units.  Yang et al. do not fix widths that fit a
# 2-core CPU; these keep a 64x64 forward at ~10 MFLOP/image and the weights at ~0.7 MB
# while the detector still separates the synthetic recapture data (see docs/training.md).
DEFAULT_WIDTHS = (8, 16, 32, 64, 128)

# The conv units' nonlinearity (``--activation``): ReLU as in the paper, or a smooth one (softplus with torch's
# defaults beta 1 and threshold 20; GELU exact, with erf), for which an input-gradient-norm penalty is not
# defeated by ReLU's piecewise-linear kinks (Rodriguez-Munoz et al. 2024).
ACTIVATIONS = {"relu": F.relu, "softplus": F.softplus, "gelu": F.gelu}


def activation_fn(name: str):
    """The function of an activation name of :data:`ACTIVATIONS` (ValueError for any other)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class ConvUnit(nn.Module):
    """3x3 conv (stride 1, pad 1) -> BatchNorm -> activation (ReLU by default) -> 5x5/2 average pool (or global
    average pool)."""

    def __init__(self, cin: int, cout: int, global_pool: bool = False, activation: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.global_pool = global_pool
        self.act = activation_fn(activation)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool:
            return x.mean(dim=(2, 3))
        return F.avg_pool2d(x, 5, stride=2, padding=2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class WidthsDetector(nn.Module):
    """A detector sized by a fixed number of channel widths: the widths check and the config a checkpoint embeds."""

    ARCH = ""

    def _set_widths(self, widths: Sequence[int], count: int, num_classes: int, who: str = "") -> tuple[int, ...]:
        widths = tuple(int(w) for w in widths)
        if len(widths) != count or min(widths) < 1:
            raise ValueError(f"{who}widths must be {_COUNT_WORDS[count]} positive integers, got {widths}")
        self.widths, self.num_classes = widths, num_classes
        return widths

    def config(self) -> dict:
        return {"arch": self.ARCH, "widths": list(self.widths), "num_classes": self.num_classes}


_COUNT_WORDS = {5: "five", 6: "six"}


class LaplacianCNN(WidthsDetector):
    """Fixed Laplacian enhancement layer, five conv units, linear layer to 2 classes.

    ``activation``: the units' nonlinearity, a name of :data:`ACTIVATIONS` (stored in :meth:`config`, so a
    checkpoint reloads with it).

    Input: [B, 3, H, W], uint8 or float32 in pixel units [0, 255].  Output: logits [B, 2]
    (class 0 = original, 1 = recaptured).  The Laplacian is fixed (not a parameter): the stem
    (Laplacian of ``recapfast.ops.reference.LAPLACIAN`` + first convolution) runs through
    ``recapfast.ops.laplace_conv``, which uses the fused C++/CUDA op when that backend is active.
    """

    ARCH = "LaplacianCNN"

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, num_classes: int = 2, activation: str = "relu"):
        super().__init__()
        widths = self._set_widths(widths, 5, num_classes)
        activation_fn(activation)
        self.activation = activation
        cins = (3,) + widths[:-1]
        self.units = nn.ModuleList(
            ConvUnit(cin, cout, global_pool=(i == 4), activation=activation)
            for i, (cin, cout) in enumerate(zip(cins, widths))
        )
        self.fc = nn.Linear(widths[-1], num_classes)

    def config(self) -> dict:
        return {**super().config(), "activation": self.activation}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LaplacianCNN expects [B, 3, H, W] input, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(torch.float32)
        stem = self.units[0]
        h = ops.laplace_conv(x, stem.conv.weight, stem.conv.bias)
        h = stem.pool(stem.act(stem.bn(h)))
        for unit in self.units[1:]:
            h = unit(h)
        return self.fc(h)

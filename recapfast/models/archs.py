"""More forensic detector architectures, trainable with ``recapfast train --arch``.

All take pixel units [B, 3, H, W] in [0, 255] and return logits [B, 2] (0 original, 1 recaptured),
like :class:`recapfast.models.laplacian.LaplacianCNN`, and end in global pooling so any patch size works.

- :class:`BayarCNN` (``bayar``): the constrained-convolution network of Bayar & Stamm (MISLnet, 2018)
  at small widths.  Its first layer is a bank of 5x5 prediction-error filters: in every (output,
  input channel) slice the centre tap is -1 and the other taps sum to 1, so the layer suppresses
  image content and passes the residual a manipulation (here: recapture) leaves.  The constraint is
  re-imposed by :meth:`BayarCNN.constrain_` after every optimizer step (``recapfast.training.train`` calls
  ``constrain_`` on any model that has it) and at construction.  Then: conv 7x7 stride 2, conv 5x5,
  conv 5x5, conv 1x1 (BatchNorm + tanh each, 3x3/2 max pooling after the first three, global average
  pooling after the last), two tanh fully connected layers, a linear layer to 2 classes.
- :class:`MesoNet4` (``meso4``): the Meso-4 network of Afchar et al. (2018): four conv blocks (3x3,
  5x5, 5x5, 5x5; ReLU, BatchNorm, max pooling 2, 2, 2, 4), dropout 0.5, a 16-unit layer with
  LeakyReLU(0.1), dropout 0.5, and here a linear layer to 2 logits (Meso-4 has one sigmoid unit).
  Input is scaled to [0, 1] inside.  Differences: global average pooling replaces the flatten (any
  patch size), and the widths are configurable (default: Meso-4's 8, 8, 16, 16).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recapfast.models.laplacian import DEFAULT_WIDTHS, LaplacianCNN, WidthsDetector


class BayarCNN(WidthsDetector):
    """MISLnet-style constrained-convolution detector; widths = (constrained filters, conv2..conv5, fc)."""

    ARCH, DEFAULT = "BayarCNN", (3, 24, 16, 16, 32, 64)

    def __init__(self, widths: Sequence[int] = DEFAULT, num_classes: int = 2):
        super().__init__()
        c0, c1, c2, c3, c4, fc = self._set_widths(widths, 6, num_classes, "BayarCNN ")
        self.constrained = nn.Conv2d(3, c0, 5, padding=2, bias=False)
        self.convs = nn.ModuleList([nn.Conv2d(c0, c1, 7, stride=2, padding=3), nn.Conv2d(c1, c2, 5, padding=2),
                                    nn.Conv2d(c2, c3, 5, padding=2), nn.Conv2d(c3, c4, 1)])
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in (c1, c2, c3, c4))
        self.fc1, self.fc2, self.out = nn.Linear(c4, fc), nn.Linear(fc, fc), nn.Linear(fc, num_classes)
        self.constrain_()

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project the first layer: centre tap -1, the other taps of each slice scaled to sum to 1."""
        w = self.constrained.weight
        w[:, :, 2, 2] = 0.0
        total = w.sum(dim=(2, 3), keepdim=True)
        total = torch.where(total.abs() < 1e-8, torch.full_like(total, 1e-8), total)
        w.div_(total)
        w[:, :, 2, 2] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.constrained(x.to(torch.float32))
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            h = torch.tanh(bn(conv(h)))
            h = F.max_pool2d(h, 3, stride=2, padding=1) if i < 3 else h.mean(dim=(2, 3))
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(h)))))


class MesoNet4(WidthsDetector):
    """Meso-4-style detector (Afchar et al. 2018); widths = (four conv widths, hidden units)."""

    ARCH, DEFAULT = "MesoNet4", (8, 8, 16, 16, 16)

    def __init__(self, widths: Sequence[int] = DEFAULT, num_classes: int = 2):
        super().__init__()
        widths = self._set_widths(widths, 5, num_classes, "MesoNet4 ")
        cins, kernels = (3,) + widths[:3], (3, 5, 5, 5)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, padding=k // 2) for i, o, k in zip(cins, widths[:4], kernels))
        self.bns = nn.ModuleList(nn.BatchNorm2d(o) for o in widths[:4])
        self.drop = nn.Dropout(0.5)
        self.hidden, self.out = nn.Linear(widths[3], widths[4]), nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32) / 255.0
        for conv, bn, pool in zip(self.convs, self.bns, (2, 2, 2, 4)):
            h = bn(F.relu(conv(h)))
            h = F.max_pool2d(h, pool, ceil_mode=True)
        h = self.drop(h.mean(dim=(2, 3)))
        return self.out(self.drop(F.leaky_relu(self.hidden(h), 0.1)))


# CLI name -> (class, default widths); config "arch" names map back through CONFIG_NAMES.
ARCHS = {"laplacian": (LaplacianCNN, DEFAULT_WIDTHS), "bayar": (BayarCNN, BayarCNN.DEFAULT),
         "meso4": (MesoNet4, MesoNet4.DEFAULT)}
CONFIG_NAMES = {cls.ARCH: name for name, (cls, _) in ARCHS.items()}


def build(arch: str, widths: Sequence[int] | None = None, num_classes: int = 2) -> nn.Module:
    """A fresh model of ``arch`` (a CLI name or a config name) with ``widths`` (default: the arch's)."""
    name = CONFIG_NAMES.get(arch, arch)
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    cls, default = ARCHS[name]
    return cls(widths=tuple(widths) if widths is not None else default, num_classes=num_classes)


__all__ = ["BayarCNN", "MesoNet4", "ARCHS", "CONFIG_NAMES", "build"]

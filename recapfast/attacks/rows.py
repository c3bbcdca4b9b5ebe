"""Rows of a multi-eps attack: one row per (patch, eps) pair of a batch, all eps in one batch.

APGD and Square run every eps of one call together: row ``r = e * B + b`` is patch ``b`` attacked at
``eps[e]``, with its own box (:func:`row_box`).  A :class:`Board` holds each row's result:

- the image it ends with (an adversarial image as soon as one is found, else the best one so far
  under the attack's own score: the highest cross-entropy for APGD, the lowest margin for Square);
- whether it was fooled, and whether by its own run or by *inheritance*: with ``dominance`` on (the
  ``auto`` cascade), a patch fooled at eps e is fooled at every larger eps e' too, because its image
  lies in the larger box (on the grid the boxes are ``[x - floor(eps), x + floor(eps)]``, nested), so
  its rows at e' take that image and are not attacked any further.

:class:`LossGrad` gives the attacks their model: logits (pure forwards) and the per-row cross-entropy
with its input gradient, through the folded fast path (``recapfast.models.fastpath``: one forward and
one hand-adjoint backward) for a plain LaplacianCNN, through autograd for any other model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recapfast.attacks.single_step import _inference_forward, attack_cotangents, eval_mode


def row_box(x0: torch.Tensor, eps: torch.Tensor, quantize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of rows with images ``x0`` [N, 3, H, W] and radii ``eps`` [N]: ``[x - eps, x + eps]`` within
    [0, 255]; on the grid (``quantize``) the integer box ``[ceil(x - eps), floor(x + eps)]``."""
    e = eps.to(x0.device, torch.float32).view(-1, 1, 1, 1)
    lo, hi = (x0 - e).clamp_min(0.0), (x0 + e).clamp_max(255.0)
    if quantize:
        lo, hi = torch.ceil(lo), torch.floor(hi)
    return lo, hi


class Board:
    """Per-row results of one multi-eps attack (see the module docstring).

    ``higher_is_better``: how the attack's score ranks two images that do not fool the model (APGD: cross-entropy,
    higher is stronger; Square: margin, lower is stronger).
    """

    def __init__(self, x0: torch.Tensor, eps: Sequence[float], higher_is_better: bool, dominance: bool = False):
        batch, n_eps = x0.shape[0], len(eps)
        device = x0.device
        self.batch, self.eps = batch, [float(e) for e in eps]
        self.patch = torch.arange(batch, device=device).repeat(n_eps)                       # [N]
        self.row_eps = torch.tensor(self.eps, dtype=torch.float32).repeat_interleave(batch).to(device)
        self.out = x0.repeat(n_eps, 1, 1, 1)                                                 # [N, 3, H, W]
        worst = -float("inf") if higher_is_better else float("inf")
        self.score = torch.full((batch * n_eps,), worst, device=device)
        self.fooled = torch.zeros(batch * n_eps, dtype=torch.bool, device=device)
        self.inherited = torch.zeros_like(self.fooled)
        self.higher = higher_is_better
        self.dominance = dominance

    @property
    def rows(self) -> int:
        return self.fooled.numel()

    def offer(self, idx: torch.Tensor, images: torch.Tensor, score: torch.Tensor) -> None:
        """Keep ``images`` for the rows ``idx`` (not fooled yet) whose ``score`` beats their best so far."""
        if idx.numel() == 0:
            return
        better = (score > self.score[idx]) if self.higher else (score < self.score[idx])
        better &= ~self.fooled[idx]
        self.out[idx] = torch.where(better.view(-1, 1, 1, 1), images, self.out[idx])
        self.score[idx] = torch.where(better, score, self.score[idx])

    def fool(self, idx: torch.Tensor, images: torch.Tensor, final: bool = True) -> None:
        """Rows ``idx`` are fooled by ``images``.  ``final``: the row stops (and, with dominance, the same patch's
        rows at larger eps stop too, with this image); else a later fooling image of the row replaces it (the
        reference's "last misclassified iterate")."""
        if idx.numel() == 0:
            return
        if not final:
            self.out[idx] = images
            self.fooled[idx] = True
            return
        fresh = ~self.fooled[idx]
        idx, images = idx[fresh], images[fresh]
        if idx.numel() == 0:
            return
        self.out[idx] = images
        self.fooled[idx] = True
        if not self.dominance:
            return
        for i, row in enumerate(idx.tolist()):
            larger = (self.patch == self.patch[row]) & (self.row_eps >= self.row_eps[row]) & ~self.fooled
            if bool(larger.any()):
                self.out[larger] = images[i]
                self.fooled |= larger
                self.inherited |= larger

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-row tensor [N, ...] as [E, B, ...]."""
        return tensor.reshape(len(self.eps), self.batch, *tensor.shape[1:])


class LossGrad:
    """The model as an attack sees it: ``logits(x)`` (pure forward) and ``__call__(x, y)`` -> (logits, per-row
    cross-entropy, input gradient of the summed cross-entropy), eval mode, no parameter gradient."""

    def __init__(self, model: nn.Module, device: torch.device):
        from recapfast.models import fastpath

        self.model = model
        self.folded = fastpath.FoldedLaplacianCNN(model) \
            if fastpath.supports(model) and next(model.parameters()).device == device else None
        self._forward = self.folded.logits if self.folded is not None else _inference_forward(model, device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model), torch.no_grad():
            return self._forward(x)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.folded is not None:
            logits, saved = self.folded.forward_saving(x)
            grad = self.folded.input_grads(saved, attack_cotangents(logits, y, ("fgsm",)))
            return logits, F.cross_entropy(logits, y, reduction="none"), grad
        xg = x.detach().to(torch.float32).requires_grad_(True)
        with eval_mode(self.model), torch.enable_grad():
            logits = self.model(xg)
            loss = F.cross_entropy(logits, y, reduction="none")
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        return logits.detach(), loss.detach(), grad


def compact_every(device: torch.device) -> int:
    """How often a running attack drops its finished rows (a host read): every step on CPU, every 8th elsewhere."""
    return 1 if device.type == "cpu" else 8


__all__ = ["row_box", "Board", "LossGrad", "compact_every"]

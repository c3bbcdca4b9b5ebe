"""APGD-CE (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1) in pixel units, on the uint8 grid.

Conventions as in ``recapfast.attacks.iterative``: images in [0, 255], eps in grey levels, one eval-mode
input gradient per iteration (parameter ``.grad`` and BatchNorm statistics untouched), every
iterate projected to the box ``[lo, hi]`` = ``[x - eps, x + eps]`` within [0, 255]; with
``quantize`` (the default) the box is the integer box ``[ceil(x - eps), floor(x + eps)]`` and every
iterate is rounded to the grid (half to even), so the model is only ever queried on images a PNG
can hold.

One restart, N iterations (loss L = per-image cross-entropy of the true label):

    x_0      = P(x + eps * t / max|t|),  t ~ U[-1, 1] per pixel (seeded CPU generator)
    eta_0    = 2 eps
    z        = P(x_k + eta * sign(grad L(x_k)))
    x_{k+1}  = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),   a = 1 for k = 0, else 0.75 (momentum)

Step-size checkpoints w_j = ceil-free fractions p_j * N of the iterations: p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (window lengths max(int(0.22 N), 1), then shrinking by
max(int(0.03 N), 1) down to max(int(0.06 N), 1), as in the reference implementation).  At a
checkpoint the step size of an image is halved, and its iterate and gradient reset to the best
point so far, when

    (1) the loss increased in at most rho = 0.75 of the window's steps, or
    (2) the step was not halved at the previous checkpoint and the best loss has not improved since.

As in the reference implementation (and torchattacks), the first window's first comparison is
against a loss of 0 rather than L(x_0).  Restarts run only on the images not yet misclassified,
with fresh noise from the same seeded generator (drawn for the whole batch, so the result does
not depend on which images are left).  Patches misclassified when clean are returned unchanged.

Returned image per patch: the last misclassified iterate when the attack succeeds (as in the
reference), else the iterate of highest loss over all restarts (the reference returns the clean
image there; the highest-loss point is what a transfer attack or an export wants).

What the uint8 grid changes (``quantize``): the box shrinks to whole grey levels (a fractional eps
acts as its floor); every iterate is rounded, so once the step size has been halved below 2/3 grey
level (0.75 x step < 0.5) a sign step alone rounds back to where it was and only the momentum term
can still move a pixel; and the random start is rounded.  With ``quantize=False`` the result equals torchattacks'
``APGD(norm="Linf", loss="ce")`` pixel for pixel (tests/test_apgd.py: with an exact power-of-two scaling
between [0, 1] and pixel units, on patches away from 0 and 255, where the two libraries' range clips differ).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recapfast.attacks.single_step import _check_labels, eval_mode
from recapfast.attacks.iterative import _box, _project


class AttackSettings:
    """The checks a restarting attack's settings share: its counts >= 1, its one fraction in (0, 1]."""

    NAME, COUNTS, FRACTION = "", (), ""

    def validate(self) -> None:
        for field in self.COUNTS:
            if getattr(self, field) < 1:
                raise ValueError(f"{self.NAME} {field} must be >= 1, got {getattr(self, field)}")
        if not 0 < getattr(self, self.FRACTION) <= 1:
            raise ValueError(f"{self.NAME} {self.FRACTION} must be in (0, 1], got {getattr(self, self.FRACTION)}")


@dataclass(frozen=True)
class APGDConfig(AttackSettings):
    """APGD settings: ``steps`` iterations per eps and restart, ``restarts``, ``rho`` the threshold of the
    step-size condition (1), ``seed`` of the random starts (defaults: the reference's 100, 1, 0.75; seed 0)."""

    NAME, COUNTS, FRACTION = "APGD", ("steps", "restarts"), "rho"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    seed: int = 0


def checkpoint_windows(steps: int) -> list[int]:
    """Lengths of the step-size windows of an N-iteration run (their running sums are the w_j)."""
    first, shrink, smallest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    windows, k, done = [], first, 0
    while done + k <= steps:
        windows.append(k)
        done += k
        k = max(k - shrink, smallest)
    return windows


def attack_inputs(x: torch.Tensor, y, eps: float, config: AttackSettings, quantize: bool):
    """The checked start of an untargeted attack that needs the true labels: ``config`` validated, then
    (float32 x, long labels, eps, and the box lo, hi every iterate stays in)."""
    config.validate()
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be [B, 3, H, W], got shape {tuple(x.shape)}")
    eps = float(eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if y is None:
        raise ValueError(f"{config.NAME.lower()} needs the true labels y")
    x0 = x.detach().to(torch.float32)
    return (x0, _check_labels(y, x0), eps) + _box(x0, eps, quantize)


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(logits, per-image CE, grad_x of the summed CE), eval mode, only x gets a gradient."""
    xg = x.detach().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(xg)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), xg)
    return logits.detach(), loss.detach(), grad


def _start(x0: torch.Tensor, eps: float, lo, hi, quantize: bool, gen: torch.Generator) -> torch.Tensor:
    t = 2.0 * torch.rand(x0.shape, generator=gen, dtype=torch.float32) - 1.0
    t = t.to(x0.device)
    scale = t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return _project(x0 + eps * t / scale, lo, hi, quantize)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _single_run(model, x0, y, lo, hi, eps, config: APGDConfig, quantize: bool, start):
    """One APGD run: (highest-loss iterate, its loss, misclassified at some iterate, last such iterate)."""
    adv = start
    logits, loss, grad = _loss_and_grad(model, adv, y)
    fooled = logits.argmax(1) != y
    x_fooled = adv.clone()
    x_best, loss_best, grad_best = adv.clone(), loss.clone(), grad.clone()
    eta = torch.full((x0.shape[0], 1, 1, 1), 2.0 * eps, device=x0.device)
    x_old = adv.clone()
    windows = checkpoint_windows(config.steps)
    k = windows[0] if windows else config.steps + 1
    window_index, count = 0, 0
    increases = torch.zeros_like(loss)
    previous = torch.zeros_like(loss)                 # the reference compares the first step with 0
    best_at_check = loss_best.clone()
    halved_at_check = torch.ones_like(fooled)          # no "no improvement" halving at the first checkpoint
    for i in range(config.steps):
        momentum = adv - x_old
        x_old = adv
        a = 0.75 if i > 0 else 1.0
        z = torch.minimum(torch.maximum(adv + eta * torch.sign(grad), lo), hi)
        adv = _project(adv + a * (z - adv) + (1.0 - a) * momentum, lo, hi, quantize)
        logits, loss, grad = _loss_and_grad(model, adv, y)
        wrong = logits.argmax(1) != y
        x_fooled = _where(wrong, adv, x_fooled)
        fooled |= wrong
        better = loss > loss_best
        x_best, grad_best = _where(better, adv, x_best), _where(better, grad, grad_best)
        loss_best = torch.where(better, loss, loss_best)
        increases += (loss > previous).to(increases.dtype)
        previous = loss
        count += 1
        if count == k:
            oscillating = increases <= k * config.rho
            stalled = ~halved_at_check & (best_at_check >= loss_best)
            halve = oscillating | stalled
            halved_at_check, best_at_check = halve, loss_best.clone()
            eta = _where(halve, eta / 2.0, eta)
            adv, grad = _where(halve, x_best, adv), _where(halve, grad_best, grad)
            window_index += 1
            k = windows[window_index] if window_index < len(windows) else config.steps + 1
            count = 0
            increases = torch.zeros_like(loss)
    return x_best, loss_best, fooled, x_fooled


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    rho: float = 0.75,
    quantize: bool = True,
) -> torch.Tensor:
    """APGD-CE adversarial images at one eps: float32 [B, 3, H, W] in [0, 255] (see the module docstring)."""
    return apgd_attack(model, x, y, eps, APGDConfig(steps, restarts, rho, seed), quantize)


def apgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                config: APGDConfig | None = None, quantize: bool = True) -> torch.Tensor:
    """:func:`apgd` with its settings in one :class:`APGDConfig` (default: the reference's); the images of
    patches misclassified when clean come back unchanged."""
    config = config or APGDConfig()
    x0, y, eps, lo, hi = attack_inputs(x, y, eps, config, quantize)
    if x0.shape[0] == 0:
        return x0.clone()
    with eval_mode(model), torch.no_grad():
        remaining = model(x0).argmax(1) == y
    out = x0.clone()
    out_loss = torch.full((x0.shape[0],), -float("inf"), device=x0.device)
    gen = torch.Generator().manual_seed(int(config.seed))
    for _ in range(config.restarts):
        start = _start(x0, eps, lo, hi, quantize, gen)          # drawn for the whole batch every restart
        idx = remaining.nonzero().flatten()                     # one host sync per restart
        if idx.numel() == 0:
            break
        best, loss, fooled, x_fooled = _single_run(model, x0[idx], y[idx], lo[idx], hi[idx], eps, config, quantize,
                                                   start[idx])
        keep_best = ~fooled & (loss > out_loss[idx])
        chosen = _where(fooled, x_fooled, _where(keep_best, best, out[idx]))
        out[idx] = chosen
        out_loss[idx] = torch.where(keep_best, loss, out_loss[idx])
        remaining[idx] = ~fooled
    return out


__all__ = ["APGDConfig", "apgd", "apgd_attack", "checkpoint_windows"]

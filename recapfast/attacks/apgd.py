"""APGD-CE (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1) in pixel units, every eps of a call in one batch.

Conventions as in ``recapfast.attacks.iterative``: images in [0, 255], eps in grey levels, one
eval-mode input gradient per iteration (parameter ``.grad`` and BatchNorm statistics untouched), every
iterate projected to the box ``[lo, hi]`` = ``[x - eps, x + eps]`` within [0, 255]; with
``quantize`` (the default) the box is the integer box ``[ceil(x - eps), floor(x + eps)]`` (a fractional
eps acts as its floor: the one eps rule of every recapfast attack on the grid).

One restart, N iterations (loss L = per-image cross-entropy of the true label):

    x_0      = P(x + eps * t / max|t|),  t ~ U[-1, 1] per pixel (seeded CPU generator, one t per patch
               shared by all eps of the call)
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

On the uint8 grid (``quantize``) the iterate, its momentum, its gradient and the step-size logic are
exactly float APGD's (in the integer box): rounding never enters the optimization, so a step smaller
than half a grey level still moves the iterate and the attack cannot stall.  What is *evaluated* is the
rounded iterate round(x_k) (half to even), forwarded again whenever it moved: a patch counts as fooled
only when a rounded image fools the model, and the image returned is always a rounded one.  Because
the grid run follows the float run's own trajectory and looks at the rounding of every iterate, it
is at least as strong as float APGD rounded at the end (tests/test_apgd.py checks this per patch on
the bundled robust model at eps 1 and 2).

Returned image per patch: with ``early_stop`` (the default) the first (rounded) iterate that fools
the model, after which that patch is no longer attacked (robust accuracy is unchanged: a fooled
patch stays fooled); otherwise the reference's last misclassified iterate.  A patch never fooled
gets its evaluated iterate of highest cross-entropy over all restarts (the reference returns the
clean image there; the highest-loss point is what a transfer attack or an export wants).

Equality with torchattacks' ``APGD(norm="Linf", loss="ce")`` (tests/test_apgd.py): with
``quantize=False`` and ``early_stop=False`` the images are equal pixel for pixel when the model sees
x / 256 (a power-of-two scaling, exact in float32) on patches inside [8, 247], where neither
library's range clip binds; at the usual x / 255 scaling only the predictions agree (x / 255 * 255
is not always x in float32, so the iterates drift by float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recapfast.attacks.single_step import _check_labels
from recapfast.attacks.iterative import _box
from recapfast.attacks.rows import Board, LossGrad, compact_every, row_box


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
    early_stop: bool = True


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


def _start_noise(x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random start's t ~ U[-1, 1] per pixel and max|t| per patch (drawn for the whole batch on the CPU)."""
    t = (2.0 * torch.rand(x0.shape, generator=gen, dtype=torch.float32) - 1.0).to(x0.device)
    return t, t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


class _Run:
    """One APGD run over some rows of a :class:`Board` (global row ids ``idx``): the float iterate and its
    step-size state, and the evaluation of its rounded points."""

    def __init__(self, lg: LossGrad, board: Board, idx, x0, y, lo, hi, eps, config: APGDConfig, quantize: bool):
        self.lg, self.board, self.config, self.quantize = lg, board, config, quantize
        self.idx, self.y, self.lo, self.hi = idx, y, lo, hi
        self.eta = (2.0 * eps).view(-1, 1, 1, 1)
        self.evaluated = None                   # the last rounded point evaluated per row

    def evaluate(self, adv: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> None:
        """Offer the evaluated point of every row to the board: the float iterate itself, or (on the grid) its
        rounding, forwarded again where it moved since the last evaluation."""
        board, final = self.board, self.config.early_stop
        if not self.quantize:
            wrong = logits.argmax(1) != self.y
            board.offer(self.idx, adv, loss)
            board.fool(self.idx[wrong], adv[wrong], final)
            return
        r = torch.round(adv)
        moved = torch.ones(r.shape[0], dtype=torch.bool, device=r.device) if self.evaluated is None else \
            (r != self.evaluated).flatten(1).any(1)
        self.evaluated = r
        local = moved.nonzero().flatten()
        if local.numel() == 0:
            return
        r_logits = self.lg.logits(r[local])
        y = self.y[local]
        board.offer(self.idx[local], r[local], F.cross_entropy(r_logits, y, reduction="none"))
        wrong = r_logits.argmax(1) != y
        board.fool(self.idx[local[wrong]], r[local[wrong]], final)

    def keep(self, mask: torch.Tensor, state: dict) -> dict:
        """Drop the rows not in ``mask`` from this run and from ``state``."""
        self.idx, self.y, self.lo, self.hi, self.eta = (t[mask] for t in (self.idx, self.y, self.lo, self.hi, self.eta))
        if self.evaluated is not None:
            self.evaluated = self.evaluated[mask]
        return {k: v[mask] for k, v in state.items()}

    def run(self, start: torch.Tensor) -> None:
        config, lo, every = self.config, self.lo, compact_every(start.device)
        logits, loss, grad = self.lg(start, self.y)
        self.evaluate(start, logits, loss)
        s = dict(adv=start, x_old=start, grad=grad, x_best=start, loss_best=loss, grad_best=grad,
                 increases=torch.zeros_like(loss), previous=torch.zeros_like(loss),   # the reference compares with 0
                 best_at_check=loss, halved=torch.ones(loss.shape, dtype=torch.bool, device=loss.device))
        windows = checkpoint_windows(config.steps)
        k = windows[0] if windows else config.steps + 1
        window_index, count = 0, 0
        for i in range(config.steps):
            if config.early_stop and i % every == 0:
                alive = ~self.board.fooled[self.idx]
                if not bool(alive.all()):
                    s = self.keep(alive, s)
                    if self.idx.numel() == 0:
                        return
            lo, hi, adv = self.lo, self.hi, s["adv"]
            momentum = adv - s["x_old"]
            a = 0.75 if i > 0 else 1.0
            z = torch.minimum(torch.maximum(adv + self.eta * torch.sign(s["grad"]), lo), hi)
            new = torch.minimum(torch.maximum(adv + a * (z - adv) + (1.0 - a) * momentum, lo), hi)
            logits, loss, grad = self.lg(new, self.y)
            self.evaluate(new, logits, loss)
            better = loss > s["loss_best"]
            s.update(x_old=adv, adv=new, grad=grad, x_best=_where(better, new, s["x_best"]),
                     grad_best=_where(better, grad, s["grad_best"]), loss_best=torch.where(better, loss, s["loss_best"]),
                     increases=s["increases"] + (loss > s["previous"]).to(loss.dtype), previous=loss)
            count += 1
            if count == k:
                halve = (s["increases"] <= k * config.rho) | (~s["halved"] & (s["best_at_check"] >= s["loss_best"]))
                self.eta = _where(halve, self.eta / 2.0, self.eta)
                s.update(halved=halve, best_at_check=s["loss_best"].clone(), adv=_where(halve, s["x_best"], s["adv"]),
                         grad=_where(halve, s["grad_best"], s["grad"]), increases=torch.zeros_like(loss))
                window_index += 1
                k = windows[window_index] if window_index < len(windows) else config.steps + 1
                count = 0


_ROW_PIXELS = 1 << 22       # pixels per chunk of rows run together (a few hundred MB of state at most)


def apgd_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
              config: APGDConfig | None = None, quantize: bool = True, attack: torch.Tensor | None = None,
              dominance: bool = False, clean_logits: torch.Tensor | None = None) -> Board:
    """APGD-CE at every eps of ``eps`` in one batch of rows (``recapfast.attacks.rows``): the :class:`Board` of the
    E * B rows.  ``attack`` [E, B] bool: the rows to attack (default all); rows whose patch is misclassified clean
    are never attacked and keep the clean image.  ``dominance``: see :class:`Board` (the ``auto`` cascade)."""
    config = config or APGDConfig()
    eps = [float(e) for e in eps]
    x0, y = attack_inputs(x, y, min(eps, default=0.0), config, quantize)[:2]     # also checks every eps >= 0
    board = Board(x0, eps, higher_is_better=True, dominance=dominance)
    if x0.shape[0] == 0 or not eps:
        return board
    lg = LossGrad(model, x0.device)
    if clean_logits is None:
        clean_logits = lg.logits(x0)
    todo = (clean_logits.argmax(1) == y).repeat(len(eps))
    if attack is not None:
        todo &= attack.reshape(-1).to(todo.device)
    gen = torch.Generator().manual_seed(int(config.seed))
    chunk = max(1, _ROW_PIXELS // max(1, x0.shape[-1] * x0.shape[-2]))
    for _ in range(config.restarts):
        t, scale = _start_noise(x0, gen)                         # drawn for the whole batch every restart
        rows = (todo & ~board.fooled).nonzero().flatten()         # one host read per restart
        if rows.numel() == 0:
            break
        for part in rows.split(chunk):
            part = part[~board.fooled[part]]                     # fooled meanwhile through a smaller eps
            if part.numel() == 0:
                continue
            patch = board.patch[part]
            xr, e = x0[patch], board.row_eps[part]
            lo, hi = row_box(xr, e, quantize)
            start = torch.minimum(torch.maximum(xr + e.view(-1, 1, 1, 1) * t[patch] / scale[patch], lo), hi)
            _Run(lg, board, part, xr, y[patch], lo, hi, e, config, quantize).run(start)
    return board


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
    attack_inputs(x, y, eps, config, quantize)
    return apgd_rows(model, x, y, [eps], config, quantize).out


__all__ = ["APGDConfig", "apgd", "apgd_attack", "apgd_rows", "checkpoint_windows"]

"""Iterative per-image attacks in pixel units: BIM/I-FGSM, ILLC, PGD and MI-FGSM.

Conventions (ARCHITECTURE.md): images in [0, 255], eps and step sizes in grey levels, one
eval-mode input gradient per step (parameter ``.grad`` and BatchNorm statistics untouched).
With ``quantize`` (the default) every iterate is rounded to the uint8 grid (half to even,
like ``recapfast.ops.perturb``) right after its step, so the attack optimizes exactly the
images a PNG would hold.  Every iterate is projected to the L-inf ball of radius eps around
the clean x and to [0, 255]; when quantizing the ball is the integer box
``[ceil(x - eps), floor(x + eps)]``, so the perturbation never exceeds eps even for a
fractional eps.

One step, for an iterate x_t (sign() of a zero gradient is 0, so such pixels stay put):

    BIM / I-FGSM (Kurakin et al. 2017):  x_{t+1} = P(x_t + a * sign(grad CE(f(x_t), y)))
    ILLC         (Kurakin et al. 2017):  x_{t+1} = P(x_t - a * sign(grad CE(f(x_t), y_ll)))
                 y_ll = argmin_y p(y|x) over ALL classes, computed ONCE on the clean x (as in
                 Kurakin; the true label is not excluded, as for LLCM in the paper, eq. 3)
    PGD          (Madry et al. 2018):    BIM from x_0 = P(x + u), u ~ U[-eps, eps] per pixel
                 (rounded to the grid), drawn from a seeded ``torch.Generator``
    MI-FGSM      (Dong et al. 2018):     g_{t+1} = mu * g_t + grad / ||grad||_1 (per image),
                 x_{t+1} = P(x_t + a * sign(g_{t+1})), mu = 1.0

P is the projection above.  Defaults: step size a = 1 grey level and
n = max(1, floor(min(eps + 4, 1.25 * eps))) steps (Kurakin's schedule, floored as in
torchattacks), for every attack, so all iterative attacks at one eps cost the same number of
gradients.  Unlike FGSM/LLCM, the iterates depend on eps, so an eps sweep runs each eps on
its own (:func:`sweep_iterative`): there is no gradient to share between eps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recapfast.attacks.single_step import (DEFAULT_EPS, SweepResult, _check_labels, _forward_chunks, eval_mode,
                                          least_likely_class, predict_images)
from recapfast.metrics import perturbation_stats

ITERATIVE_ATTACKS = ("bim", "illc", "pgd", "mifgsm")


def default_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count min(eps + 4, 1.25 eps), floored, at least 1 (eps in grey levels)."""
    return max(1, int(math.floor(min(float(eps) + 4.0, 1.25 * float(eps)))))


@dataclass(frozen=True)
class IterativeConfig:
    """Settings shared by the iterative attacks (None: the defaults documented in the module)."""

    steps: int | None = None
    step_size: float | None = None
    random_start: bool = True      # PGD only
    seed: int = 0                  # PGD's random start
    decay: float = 1.0             # MI-FGSM's mu

    def resolve(self, eps: float) -> tuple[int, float]:
        steps = default_steps(eps) if self.steps is None else int(self.steps)
        step = 1.0 if self.step_size is None else float(self.step_size)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if step <= 0:
            raise ValueError(f"step size must be > 0 grey levels, got {step}")
        return steps, step


def loss_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, grad_x of the summed CE(f(x), target)) with the model in eval mode; only x gets a gradient."""
    xf = x.detach().to(torch.float32).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(xf)
        loss = F.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xf)
    return logits.detach(), grad


def _box(x: torch.Tensor, eps: float, quantize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lo = (x - eps).clamp_min(0.0)
    hi = (x + eps).clamp_max(255.0)
    if quantize:
        lo, hi = torch.ceil(lo), torch.floor(hi)
    return lo, hi


def _project(z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, quantize: bool) -> torch.Tensor:
    if quantize:
        z = torch.round(z)
    return torch.minimum(torch.maximum(z, lo), hi)


def iterative_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps: float,
    attack: str = "bim",
    steps: int | None = None,
    step_size: float | None = None,
    quantize: bool = True,
    random_start: bool = True,
    seed: int = 0,
    decay: float = 1.0,
) -> torch.Tensor:
    """Adversarial images of one iterative attack at one eps: float32 [B, 3, H, W] in [0, 255].

    ``x`` is uint8 or float in [0, 255]; ``y`` the true labels (not needed by ``illc``).
    """
    if attack not in ITERATIVE_ATTACKS:
        raise ValueError(f"unknown iterative attack {attack!r}; choose from {', '.join(ITERATIVE_ATTACKS)}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be [B, 3, H, W], got shape {tuple(x.shape)}")
    eps = float(eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    n, alpha = IterativeConfig(steps, step_size).resolve(eps)
    if quantize and alpha < 0.5:
        raise ValueError(f"a step of {alpha:g} grey level rounds back onto the same uint8 value; "
                         "use a step size >= 0.5 (or quantize=False)")
    x0 = x.detach().to(torch.float32)
    if x0.shape[0] == 0:
        return x0.clone()
    lo, hi = _box(x0, eps, quantize)
    if attack == "illc":
        with eval_mode(model), torch.no_grad():
            target = least_likely_class(model(x0))
        direction = -1.0
    else:
        if y is None:
            raise ValueError(f"{attack} needs the true labels y")
        target = _check_labels(y, x0)
        direction = 1.0
    adv = x0.clone()
    if attack == "pgd" and random_start and eps > 0:
        gen = torch.Generator(device=x0.device).manual_seed(int(seed))
        noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=torch.float32) * (2 * eps) - eps
        adv = _project(x0 + noise, lo, hi, quantize)
    momentum = torch.zeros_like(x0) if attack == "mifgsm" else None
    for _ in range(n):
        _, grad = loss_gradient(model, adv, target)
        if momentum is not None:
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-30).view(-1, 1, 1, 1)
            momentum = decay * momentum + grad / l1
            grad = momentum
        adv = _project(adv + (direction * alpha) * torch.sign(grad), lo, hi, quantize)
    return adv


def bim(model, x, y, eps, steps=None, step_size=None, quantize=True) -> torch.Tensor:
    """BIM / I-FGSM (Kurakin et al.): iterated FGSM steps of ``step_size`` grey levels, projected to the eps ball."""
    return iterative_attack(model, x, y, eps, "bim", steps, step_size, quantize)


def illc(model, x, y, eps, steps=None, step_size=None, quantize=True) -> torch.Tensor:
    """Iterative least-likely class (Kurakin et al.); the target class is fixed on the clean x. y is unused."""
    return iterative_attack(model, x, y, eps, "illc", steps, step_size, quantize)


def pgd(model, x, y, eps, steps=None, step_size=None, quantize=True, random_start=True, seed=0) -> torch.Tensor:
    """PGD (Madry et al.): BIM from a seeded uniform random start in the eps ball (grid-rounded)."""
    return iterative_attack(model, x, y, eps, "pgd", steps, step_size, quantize, random_start, seed)


def mifgsm(model, x, y, eps, steps=None, step_size=None, quantize=True, decay=1.0) -> torch.Tensor:
    """MI-FGSM (Dong et al.): sign of the accumulated L1-normalized gradient, decay ``mu``."""
    return iterative_attack(model, x, y, eps, "mifgsm", steps, step_size, quantize, decay=decay)


def run_attack(model, x, y, eps: float, attack: str, quantize: bool = True,
               config: IterativeConfig | None = None) -> torch.Tensor:
    """Any attack by name (fgsm, llcm or an iterative one) at one eps: float32 [B, 3, H, W]."""
    from recapfast.attacks.single_step import ATTACKS, fgsm, llcm

    if attack in ATTACKS:
        return (fgsm if attack == "fgsm" else llcm)(model, x, y, eps, quantize=quantize)
    c = config or IterativeConfig()
    return iterative_attack(model, x, y, eps, attack, c.steps, c.step_size, quantize, c.random_start, c.seed,
                            c.decay)


def sweep_iterative(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, eps: Sequence[float] = DEFAULT_EPS,
                    attacks: Sequence[str] = ITERATIVE_ATTACKS, quantize: bool = True,
                    config: IterativeConfig | None = None, return_images: bool = False,
                    clean_logits: torch.Tensor | None = None, max_forward_batch: int = 1024,
                    metrics: str = "fast") -> SweepResult:
    """Every (iterative attack, eps) prediction for one batch, as a :class:`SweepResult`.

    Each eps is attacked separately (the iterates depend on eps). Images are uint8 [E, B, 3, H, W]
    when quantized (float32 otherwise), like :func:`recapfast.sweep`.
    """
    eps = [float(e) for e in eps]
    config = config or IterativeConfig()
    x = x.detach()
    xf = x.to(torch.float32)
    if clean_logits is None:
        with eval_mode(model), torch.no_grad():
            clean_logits = _forward_chunks(model, xf, max_forward_batch) if x.shape[0] else \
                xf.new_empty((0, 2))
    predictions, linf, l2, mse, images, ssim = {}, {}, {}, {}, {}, {}
    for name in attacks:
        if name not in ITERATIVE_ATTACKS:
            raise ValueError(f"unknown iterative attack {name!r}; choose from {', '.join(ITERATIVE_ATTACKS)}")
        advs = [run_attack(model, x, y, e, name, quantize, config) for e in eps]
        adv = torch.stack(advs) if advs else xf.new_empty((0, *xf.shape))
        predictions[name] = predict_images(model, adv, (len(eps),), x.shape[0], max_forward_batch)
        if quantize:
            adv = adv.to(torch.uint8)                 # on the grid already: exact
        stats = perturbation_stats(x, adv, metrics)
        linf[name], l2[name], mse[name], ssim[name] = stats["linf"], stats["l2"], stats["mse"], stats["ssim"]
        if return_images:
            images[name] = adv
    return SweepResult(eps, clean_logits, predictions, linf, l2, mse, images, ssim)


__all__ = ["ITERATIVE_ATTACKS", "IterativeConfig", "default_steps", "loss_gradient", "iterative_attack", "bim",
           "illc", "pgd", "mifgsm", "run_attack", "sweep_iterative"]

"""The adversarial-training defences besides eq. 5-7: fast-at and TRADES, on the uint8 grid, eps drawn per image.

Every defence draws each image's eps from U[eps_min, eps_max] (:func:`adversarial_eps`, as the paper does) and
keeps its adversarial image in the one box of every recapfast attack on the grid, ``[ceil(x - eps), floor(x + eps)]``
within [0, 255] (``recapfast.attacks.rows.row_box``).  Randomness comes from generators seeded by (seed, step) and,
for per-pixel noise, by the image's index in the global batch (:func:`image_noise`): a run is resumable at any step
and a torchrun rank holding images r, r + world, ... draws exactly their eps and noise.  The attacks run with the
model in eval mode (BatchNorm statistics untouched; the fast path for a LaplacianCNN), the loss in train mode.

- ``fast-at`` (Wong, Rice & Kolter 2020, "Fast is better than free"): per image, a uniform random start
  ``x0 = P(round(x + eps * u))``, u ~ U[-1, 1] per pixel, then ONE FGSM step of ``fast_at_step * eps`` (1.25 eps)
  from x0: ``x' = P(round(x0 + 1.25 eps * sign(grad_x CE(f(x0), y))))``; the loss is CE(f(x'), y) over the batch
  (every image adversarial, as in the paper).  The gradient is taken in eval mode, like eq. 5-7's FGSM images
  (the paper's code takes it in train mode; eval mode keeps recapfast's one convention for attacks, runs the folded
  fast path and does not update BatchNorm's running statistics with the attack's forward).
- ``trades`` (Zhang et al. 2019): ``loss = CE(f(x), y) + beta * KL(f(x) || f(x')) / B`` (KL of the softmax
  outputs, summed over the batch then divided by its size, as the reference code), x' from a PGD-k maximization
  of the KL in eval mode (as the reference: ``model.eval()`` for the attack, so the attack neither uses batch
  statistics nor moves the running ones, then ``model.train()`` for the loss, whose two forwards, of x and of x',
  run in train mode):

      p     = softmax(f_eval(x))                                     (fixed during the attack)
      x'_0  = P(x + 0.255 * n),  n ~ N(0, 1) per pixel                (the reference's 0.001 of the [0, 1] range)
      x'_t+1 = P(x'_t + a * sign(grad KL(p || softmax(f_eval(x'_t)))))   a = trades_step * eps (default 2.5 eps / k)
      x'    = round(x'_k)                                            (a uint8 image, inside the integer box)

  The iterate is not rounded between steps (a step of eps / 4 < 0.5 grey level would round back and stall), the
  same grid semantics as APGD's float iterate; only the image trained on is a grid image.  The start noise is
  needed: at x' = x the KL's gradient is exactly zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recapfast.attacks.rows import row_box
from recapfast.attacks.single_step import eval_mode, input_gradients

DEFENSES = ("none", "paper", "fast-at", "trades")       # "none": the baseline (plain cross-entropy)
TRADES_START = 0.001 * 255.0                            # std of TRADES' start noise in grey levels


def adversarial_eps(config, step: int, global_batch: int, rank: int = 0, world: int = 1,
                    count: int | None = None) -> torch.Tensor:
    """Per-image eps ~ U[eps_min, eps_max] of this rank's share of the global batch's first ``count`` images
    (default: eq. 7's k, ``config.adv_count``; fast-at and TRADES: the whole batch).

    Drawn for those images from a generator seeded by (seed, step), so a run is resumable and a torchrun rank
    holding images r, r + world, ... gets exactly their eps.
    """
    k_global = min(config.adv_count if count is None else count, global_batch)
    gen = torch.Generator().manual_seed((config.seed * 1_000_003 + step) % 2 ** 64)
    eps = config.eps_min + (config.eps_max - config.eps_min) * torch.rand(k_global, generator=gen)
    return eps[rank::world]


def image_noise(config, step: int, shape, count: int, rank: int = 0, world: int = 1,
                normal: bool = False) -> torch.Tensor:
    """Per-pixel noise [count, *shape] of this rank's images (global indices rank, rank + world, ...): U[-1, 1) or
    (``normal``) N(0, 1), each image from its own generator seeded by (seed, step, global index), on the CPU."""
    out = torch.empty((count, *shape))
    for j in range(count):
        index = rank + j * world
        gen = torch.Generator().manual_seed(((config.seed * 1_000_003 + step) * 1_000_033 + index) % (1 << 63))
        out[j] = torch.randn(shape, generator=gen) if normal else 2.0 * torch.rand(shape, generator=gen) - 1.0
    return out


def _per_image(eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return eps.to(x.device, torch.float32, non_blocking=True).view(-1, 1, 1, 1)


def fast_at_batch(model, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, u: torch.Tensor,
                  step_factor: float = 1.25) -> torch.Tensor:
    """Fast-at's images: FGSM of ``step_factor * eps`` from the random start ``x + eps * u``, on the grid, in the
    box."""
    x = x.detach().to(torch.float32)
    e = _per_image(eps, x)
    lo, hi = row_box(x, eps, True)
    start = torch.minimum(torch.maximum(torch.round(x + e * u.to(x.device, non_blocking=True)), lo), hi)
    grad = input_gradients(model, start, y, ("fgsm",))[1]["fgsm"]
    return torch.minimum(torch.maximum(torch.round(start + (step_factor * e) * torch.sign(grad)), lo), hi)


def kl_input_gradient(model, x_adv: torch.Tensor, p: torch.Tensor, folded=None) -> torch.Tensor:
    """grad_x' of sum_i KL(p_i || softmax(f(x'_i))) in eval mode: through the folded fast path (``folded``, one
    forward and the hand adjoint of the cotangent softmax(z') - p), else autograd."""
    if folded is not None:
        logits, saved = folded.forward_saving(x_adv)
        return folded.input_grads(saved, torch.softmax(logits, 1) - p)
    xg = x_adv.detach().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        kl = F.kl_div(F.log_softmax(model(xg), 1), p, reduction="sum")
        (grad,) = torch.autograd.grad(kl, xg)
    return grad


def trades_adversarial(model, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor, steps: int,
                       step_fraction: float) -> torch.Tensor:
    """TRADES' inner maximization (module docstring): x' on the grid, in each image's box; ``noise`` [B, 3, H, W]
    is the start's N(0, 1) draw (scaled here by :data:`TRADES_START`)."""
    from recapfast.models import fastpath

    x = x.detach().to(torch.float32)
    e = _per_image(eps, x)
    lo, hi = row_box(x, eps, True)
    folded = fastpath.FoldedLaplacianCNN(model) \
        if fastpath.supports(model) and next(model.parameters()).device == x.device else None
    with eval_mode(model), torch.no_grad():
        p = torch.softmax(folded.logits(x) if folded is not None else model(x), 1)
    adv = torch.minimum(torch.maximum(x + TRADES_START * noise.to(x.device, non_blocking=True), lo), hi)
    step = step_fraction * e
    for _ in range(steps):
        grad = kl_input_gradient(model, adv, p, folded)
        adv = torch.minimum(torch.maximum(adv + step * torch.sign(grad), lo), hi)
    return torch.round(adv)


def trades_loss(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, dict]:
    """CE(f(x), y) + beta * sum_i KL(softmax f(x_i) || softmax f(x'_i)) / B, both forwards in the model's mode."""
    logits = model(x)
    logits_adv = model(x_adv.detach())
    ce = F.cross_entropy(logits, y)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="sum") / x.shape[0]
    return ce + beta * kl, {"ce": ce.detach(), "kl": kl.detach()}


def trades_step_fraction(config) -> float:
    """TRADES' step size as a fraction of each image's eps: ``config.trades_step``, or 2.5 / k (Madry et al.'s rule:
    k steps travel 2.5 eps; 0.25 eps at the default k = 10, the reference's 0.007 / 0.031 = 0.23)."""
    return float(config.trades_step) if config.trades_step is not None else 2.5 / config.trades_steps


def defense_loss(model, x: torch.Tensor, y: torch.Tensor, config, step: int, rank: int = 0, world: int = 1
                 ) -> tuple[torch.Tensor, dict]:
    """The loss of one step of ``config.defense`` in ("fast-at", "trades"); ``x`` is this rank's slice
    ``batch[rank::world]`` of the global batch (every image of it is attacked)."""
    global_batch = x.shape[0] * world
    eps = adversarial_eps(config, step, global_batch, rank, world, count=global_batch)
    normal = config.defense == "trades"
    noise = image_noise(config, step, tuple(x.shape[1:]), x.shape[0], rank, world, normal=normal)
    if config.defense == "fast-at":
        xb = fast_at_batch(model, x, y, eps, noise, config.fast_at_step)
        loss = F.cross_entropy(model(xb), y)
        return loss, {"ce": loss.detach()}
    if config.defense == "trades":
        x_adv = trades_adversarial(model, x, eps, noise, config.trades_steps, trades_step_fraction(config))
        return trades_loss(model, x, y, x_adv, config.trades_beta)
    raise ValueError(f"defense_loss: {config.defense!r} is not fast-at or trades")


__all__ = ["DEFENSES", "TRADES_START", "adversarial_eps", "image_noise", "fast_at_batch", "kl_input_gradient",
           "trades_adversarial", "trades_loss", "trades_step_fraction", "defense_loss"]

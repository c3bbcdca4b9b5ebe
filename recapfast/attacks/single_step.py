"""FGSM, LLCM and the shared-gradient eps sweep (Zhao et al. 2018, eq. 2-4).

Conventions (ARCHITECTURE.md): pixel units [0, 255]; eps in grey levels; gradients taken
with the model in eval mode, without touching parameter gradients or BatchNorm statistics;
adversarial images quantized to the uint8 grid by default.

    FGSM: x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 255)
    LLCM: y_min = argmin_y p(y|x) over ALL classes (paper eq. 3),
          x_adv = clip(x - eps * sign(grad_x CE(f(x), y_min)), 0, 255)

On the uint8 grid every attack of recapfast stays in the integer box [ceil(x - eps), floor(x + eps)]
within [0, 255]; for uint8 x that is x +- floor(eps): a fractional eps acts as its floor
(:func:`signed_step`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recapfast import ops
from recapfast.metrics import perturbation_stats

ATTACKS = ("fgsm", "llcm")
# +1: step up the true-label loss (FGSM); -1: step down the least-likely-class loss (LLCM).
ATTACK_SIGN = {"fgsm": 1.0, "llcm": -1.0}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with the model in eval mode (BN uses running stats, no updates), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_pixels(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be [B, 3, H, W], got shape {tuple(x.shape)}")
    return x.to(torch.float32)


def _check_labels(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y, device=x.device).long().reshape(-1)
    if y.numel() != x.shape[0]:
        raise ValueError(f"y has {y.numel()} labels for a batch of {x.shape[0]} images")
    return y


def least_likely_class(logits: torch.Tensor) -> torch.Tensor:
    """argmin_y p(y|x) over all classes (the true label is NOT excluded, unlike torchattacks)."""
    return logits.argmin(dim=1)


def attack_target(name: str, y: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The class whose cross-entropy an attack follows: the true label (FGSM) or the least likely class (LLCM)."""
    if name == "fgsm":
        if y is None:
            raise ValueError("FGSM needs the true labels y")
        return _check_labels(y, logits)
    if name == "llcm":
        return least_likely_class(logits.detach())
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")


def attack_cotangents(logits: torch.Tensor, y: torch.Tensor | None, attacks: Sequence[str]) -> torch.Tensor:
    """d(loss)/d(logits) of every attack, stacked: [len(attacks) * B, classes].

    FGSM: cross-entropy at the true label; LLCM: at the least likely class (argmin over all classes).
    Computed by autograd of ``F.cross_entropy(..., reduction="sum")`` on the logits, i.e. exactly the
    softmax-minus-one-hot coefficients the reference backward starts from (in float32, p_true - 1
    rounds to 0 on confident patches: the FGSM direction there is that of the other logit alone).
    """
    rows = []
    z = logits.detach().to(torch.float32).clone().requires_grad_(True)
    with torch.enable_grad():
        for name in attacks:
            (c,) = torch.autograd.grad(F.cross_entropy(z, attack_target(name, y, z), reduction="sum"), z)
            rows.append(c)
    return torch.cat(rows) if rows else logits.new_empty((0, logits.shape[-1]))


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                    attacks: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clean logits and {attack: grad_x of its loss}, the model in eval mode.

    A plain LaplacianCNN goes through ``recapfast.models.fastpath``: one forward, then ONE backward pass
    for all attacks (their cotangents stacked along the batch). Any other model: one forward and one
    autograd backward per attack. Only the input gets a gradient: parameters' ``.grad`` stay untouched.
    """
    from recapfast.models import fastpath

    pixels = _as_pixels(x)                                                 # validates the shape
    xd = x.detach() if x.dtype == torch.uint8 else pixels.detach()
    if fastpath.supports(model) and xd.device == next(model.parameters()).device:
        folded = fastpath.FoldedLaplacianCNN(model)
        logits, saved = folded.forward_saving(xd)
        batch = xd.shape[0]
        grads = folded.input_grads(saved, attack_cotangents(logits, y, attacks)) if attacks else None
        return logits, {name: grads[i * batch:(i + 1) * batch] for i, name in enumerate(attacks)}
    return autograd_input_gradients(model, x, y, attacks)


def autograd_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                             attacks: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference: model(x) in eval mode, then one ``torch.autograd.grad`` per attack (any model)."""
    xf = _as_pixels(x).detach().requires_grad_(True)
    grads: dict[str, torch.Tensor] = {}
    with eval_mode(model), torch.enable_grad():
        logits = model(xf)
        for i, name in enumerate(attacks):
            # Sum, not mean: the sign is the same and tiny per-image gradients do not underflow.
            loss = F.cross_entropy(logits, attack_target(name, y, logits), reduction="sum")
            (grads[name],) = torch.autograd.grad(loss, xf, retain_graph=i + 1 < len(attacks))
    return logits.detach(), grads


def signed_step(x: torch.Tensor, grad: torch.Tensor, eps: Sequence[float] | torch.Tensor, sign: float = 1.0,
                quantize: bool = True) -> torch.Tensor:
    """The one single-step perturbation: clip(x + sign * eps * sign(grad), 0, 255) (FGSM is ``sign=+1``, LLCM
    ``sign=-1``, :data:`ATTACK_SIGN`).

    On the uint8 grid (``quantize``, a sequence of eps) the step stays in the integer box
    ``[ceil(x - eps), floor(x + eps)]`` within [0, 255], the box of every recapfast attack: a pixel goes to the
    box's upper corner where sign * sign(grad) > 0, its lower corner where < 0, and stays (rounded, half to even)
    where the gradient is 0.  For uint8 x that is x + sign * floor(eps) * sign(grad), clipped: a fractional eps
    acts as its floor (eps 1.5 moves every pixel by 1, never by 2).

    ``eps`` a sequence of E floats: [E, *x.shape] from one pass over x and grad (``recapfast.ops.perturb``,
    the kernel), uint8 when ``quantize`` else float32.  ``eps`` a tensor of B per-image eps (training's
    FGSM images; on any device, never read on the host): [B, *x.shape] float32, rounded to the grid when
    ``quantize`` (training's recipe: eps ~ U[eps_min, eps_max] per image, the image rounded, as in the paper).
    Both compute in float32: x + float32(sign * eps) * sign(grad).
    """
    if not isinstance(eps, torch.Tensor):
        eps = [float(e) for e in eps]
        if not quantize or x.dtype == torch.uint8:
            steps = [float(math.floor(e)) for e in eps] if quantize else eps
            return ops.perturb(x.detach(), grad, steps, [float(sign)] * len(eps), quantize)
        return _grid_step(x.detach().to(torch.float32), grad, eps, sign)
    step = (float(sign) * eps).to(x.device, torch.float32, non_blocking=True).view(-1, *([1] * (x.dim() - 1)))
    adv = torch.clamp(x.detach().to(torch.float32) + step * torch.sign(grad.detach().to(torch.float32)), 0.0, 255.0)
    return torch.round(adv) if quantize else adv


def _grid_step(x: torch.Tensor, grad: torch.Tensor, eps: Sequence[float], sign: float) -> torch.Tensor:
    """:func:`signed_step` on the grid for float x (not necessarily whole grey levels): the integer box's corners."""
    direction = float(sign) * torch.sign(grad.detach().to(torch.float32))
    out = []
    for e in eps:
        lo, hi = torch.ceil((x - e).clamp_min(0.0)), torch.floor((x + e).clamp_max(255.0))
        stay = torch.minimum(torch.maximum(torch.round(x), lo), hi)
        out.append(torch.where(direction > 0, hi, torch.where(direction < 0, lo, stay)).to(torch.uint8))
    return torch.stack(out) if out else x.new_empty((0, *x.shape), dtype=torch.uint8)


def shared_gradient_images(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, eps: Sequence[float],
                           attacks: Sequence[str], quantize: bool = True
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clean logits and {attack: [E, B, 3, H, W] adversarial images} of the single-step attacks (fgsm, llcm) at
    every eps, from ONE input-gradient pass per batch (:func:`input_gradients`) and :func:`signed_step`."""
    for name in attacks:
        if name not in ATTACK_SIGN:
            raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    x = x.detach()
    clean_logits, grads = input_gradients(model, x, y, attacks)
    return clean_logits, {name: signed_step(x, grads[name], eps, ATTACK_SIGN[name], quantize) for name in attacks}


def _single(model, x, y, eps, attack, quantize):
    _, adv = shared_gradient_images(model, x, y, [float(eps)], (attack,), quantize)
    return adv[attack][0].to(torch.float32)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, quantize: bool = True) -> torch.Tensor:
    """FGSM adversarial images, float32 in [0, 255] (on the uint8 grid when ``quantize``)."""
    return _single(model, x, y, eps, "fgsm", quantize)


def llcm(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, eps: float, quantize: bool = True) -> torch.Tensor:
    """LLCM adversarial images, float32 in [0, 255] (y is not needed; accepted for symmetry)."""
    return _single(model, x, y, eps, "llcm", quantize)


@dataclass
class SweepResult:
    """Per attack x eps predictions of one batch, from one gradient per attack.

    ``predictions[attack]`` is [E, B]; ``linf``/``l2``/``mse`` are per-image perturbation
    norms [E, B] in pixel units and ``ssim`` the per-image SSIM [E, B] (float64; NaN where the
    ``metrics`` level left them out); ``images[attack]`` is [E, B, 3, H, W] when requested.
    """

    eps: list[float]
    clean_logits: torch.Tensor
    predictions: dict[str, torch.Tensor]
    linf: dict[str, torch.Tensor]
    l2: dict[str, torch.Tensor]
    mse: dict[str, torch.Tensor]
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    ssim: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def clean_predictions(self) -> torch.Tensor:
        return self.clean_logits.argmax(dim=1)


_CPU_FORWARD_PIXELS = 1 << 19      # pixels per pure forward on CPU: 128 images at 64 px, 8 at 256 px


def _inference_forward(model: nn.Module, device: torch.device):
    """``model`` as a function for pure (no-gradient) forwards.

    A plain LaplacianCNN runs folded (``recapfast.models.fastpath``: BatchNorm folded into the convolutions,
    fused ReLU + pooling, channels_last). Any other model on CPU gets its 4-d weights passed in
    channels_last (``torch.func.functional_call``; the model itself is not touched), 1.4-1.9x faster
    per forward on the 2-core bench machine (bench/NOTES.md). Logits differ from the plain NCHW
    forward only by float rounding (~1e-6 relative).
    """
    from recapfast.models import fastpath

    if fastpath.supports(model) and next(model.parameters()).device == device:
        return fastpath.FoldedLaplacianCNN(model).logits
    if device.type != "cpu":
        return lambda x: model(x.to(torch.float32))
    state = {name: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
             for name, t in [*model.named_parameters(), *model.named_buffers()]}
    return lambda x: torch.func.functional_call(model, state, (x.to(torch.float32),))


def _forward_chunks(model: nn.Module, batches: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits of [N, 3, H, W] in forwards of at most ``chunk`` images (pure forwards: no gradient)."""
    flat = batches.reshape(-1, *batches.shape[-3:])
    if flat.device.type == "cpu":
        # Cache-sized chunks: at 256 px one forward of 80 images ran 2x slower than ten of 8 (bench/NOTES.md).
        chunk = min(chunk, max(1, _CPU_FORWARD_PIXELS // max(1, flat.shape[-1] * flat.shape[-2])))
    forward = _inference_forward(model, flat.device)
    outs = [forward(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)]
    return torch.cat(outs) if outs else flat.new_empty((0, 2), dtype=torch.float32)


def predict_images(model: nn.Module, adv: torch.Tensor, shape: tuple, batch: int, max_forward_batch: int = 1024
                   ) -> torch.Tensor:
    """Predicted classes [*shape, batch] of the adversarial images ``adv`` (prod(shape) batches of ``batch``
    images), in pure eval-mode forwards of at most ``max_forward_batch`` images (:func:`_forward_chunks`)."""
    with eval_mode(model), torch.no_grad():
        if adv.numel():
            return _forward_chunks(model, adv, max_forward_batch).reshape(*shape, batch, -1).argmax(dim=-1)
    return torch.zeros((*shape, batch), dtype=torch.long, device=adv.device)


DEFAULT_EPS = (1, 2, 3, 4, 5)


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, eps: Sequence[float] = DEFAULT_EPS,
          attacks: Sequence[str] = ATTACKS, quantize: bool = True, return_images: bool = False,
          max_forward_batch: int = 1024, metrics: str = "fast") -> SweepResult:
    """Clean + every (attack, eps) prediction for one batch.

    One forward and one backward pass give every attack's gradient, and ``recapfast.ops.perturb`` writes all
    eps at once (:func:`shared_gradient_images`); the adversarial forwards of all attacks and
    eps run batched (chunks of ``max_forward_batch`` images) under ``no_grad`` (what it returns are ordinary tensors).
    ``metrics``: "fast" (L-inf, L2, MSE; default), "full" (and SSIM), "none" (all NaN).
    """
    eps = [float(e) for e in eps]
    attacks = tuple(attacks)
    x = x.detach()
    clean_logits, adv = shared_gradient_images(model, x, y, eps, attacks, quantize)
    shape = (len(attacks), len(eps))
    # [A * E, B, 3, H, W]: one batched forward pass and one metrics pass for every attack and eps
    stacked = torch.cat([adv[name] for name in attacks]) if len(attacks) > 1 else adv[attacks[0]] if attacks else \
        x.new_empty((0, *x.shape), dtype=torch.uint8 if quantize else torch.float32)
    predictions = predict_images(model, stacked, shape, x.shape[0], max_forward_batch)
    stats = {key: value.reshape(*shape, x.shape[0]) for key, value in perturbation_stats(x, stacked, metrics).items()}
    part = lambda key: {name: stats[key][i] for i, name in enumerate(attacks)}  # noqa: E731
    images = {name: adv[name] for name in attacks} if return_images else {}
    return SweepResult(eps, clean_logits, {name: predictions[i] for i, name in enumerate(attacks)},
                       part("linf"), part("l2"), part("mse"), images, part("ssim"))

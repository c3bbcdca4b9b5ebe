"""Universal adversarial perturbations (UAPs): one delta for every image, data-free or data-driven.

A UAP is an integer delta [3, S, S] with ||delta||_inf <= xi (grey levels), added to every
patch: x_u = clip(x + fit(delta), 0, 255), which stays on the uint8 grid.  ``fit`` center-crops
a larger delta or tiles (repeats) a smaller one to the patch size.

Data-free objective (what :func:`data_free_uap` maximizes), after Mopuri et al.'s "fast feature
fool" and the neuron over-firing of Huang et al. (ICIP 2020):

    J(delta) = sum_{l in L} log( mean over batch, channels, pixels of ReLU(BN_l(conv_l(x0 + delta))) )

with L = {the LAST conv unit} by default (``layers=(-1,)``; ``layers=(0, 1, 2, 3, 4)`` gives
Mopuri's all-layer product), BN in eval mode (running statistics), and x0 a small batch of
neutral inputs: mid-grey (128) plus N(0, 4^2) noise, rounded and clipped (no data is used).
Why: the last unit's globally pooled activations are exactly the features the linear classifier
reads; a delta that makes them over-fire swamps the image's own evidence, so the decision
follows the perturbation rather than the content, whatever the image.  Why only the last unit:
the early units sit right after the fixed Laplacian and over-fire for ANY high-frequency
pattern (random sign noise already nearly maximizes them), so in the all-layer product they
dominate the gradient and the result is no better than random noise.  Measured on a baseline
model at xi 2: all-layer objective 6.2% fooling (= random sign noise), last unit 39.6%.  The
log makes J scale-free (a product of layer means when several layers are used); the mid-grey
base is content-free, so the Laplacian stem sees (almost) only delta, and the noise keeps delta
from over-fitting one exact input.

It is maximized by sign-gradient ascent with a step of 1 grey level, delta kept on the integer
grid and clipped to [-xi, xi] after every step; the delta with the best J over the iterations
is returned.

Data-driven variant (:func:`data_driven_uap`): given labelled or unlabelled images, maximize
the summed cross-entropy of f(clip(x + delta)) against the clean predictions f(x) (push every
image away from its own decision), by the same projected integer sign ascent over mini-batches.

Files: a UAP is saved as an RGB PNG holding delta + 128 (uint8) with the xi, model, method and
objective in PNG text chunks (``recapfast:format`` = ``recapfast-uap/1``, ``recapfast:xi``,
``recapfast:offset``, ``recapfast:method``, ...), plus a JSON beside it (same name, .json) with the
same record; both written atomically.  :func:`load_uap` accepts only PNGs that carry recapfast's
provenance chunks and an xi the pixels respect: any other PNG (a photo) is refused, not applied.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recapfast.io import atomic
from recapfast.attacks.single_step import eval_mode
from recapfast.errors import UserError

UAP_OFFSET = 128
UAP_FORMAT = "recapfast-uap/1"
MAX_UAP_PIXELS = 4096 * 4096


class UAPError(UserError):
    """A UAP file that cannot be used."""


@dataclass
class UAP:
    """An integer perturbation ``delta`` (int16 [3, S, S]) and where it came from."""

    delta: torch.Tensor
    xi: float
    model: str = ""
    method: str = "data-free"
    objective: str = ""
    iterations: int = 0
    seed: int = 0
    history: list = field(default_factory=list)

    def info(self) -> dict:
        d = asdict(self)
        d.pop("delta")
        d.update(size=list(self.delta.shape), linf=int(self.delta.abs().max()) if self.delta.numel() else 0)
        return d


DATA_FREE_OBJECTIVE = ("sum over conv units {layers} of log(mean post-ReLU activation) on mid-grey + N(0,4^2) "
                       "noise; integer sign-gradient ascent, step 1, ||delta||_inf <= xi")
DATA_DRIVEN_OBJECTIVE = ("sum over images of CE(f(clip(x + delta)), clean prediction); "
                         "integer sign-gradient ascent, step 1, ||delta||_inf <= xi")


def conv_activation_means(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Mean post-ReLU activation of each conv unit (BN output through ReLU), captured by forward hooks."""
    means: list[torch.Tensor] = []
    hooks = [unit.bn.register_forward_hook(lambda _m, _i, out: means.append(F.relu(out).mean()))
             for unit in model.units]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return means


def _check_xi(xi: float) -> int:
    from recapfast.validate import number

    return int(number(xi, "xi", 0.0, 127.0))  # delta lives on the integer grid: |delta| <= floor(xi)


def neutral_inputs(count: int, size: int, seed: int, device=None) -> torch.Tensor:
    """Mid-grey images plus N(0, 4^2) noise, rounded and clipped: the data-free objective's inputs."""
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((count, 3, size, size), generator=gen) * 4.0
    return torch.round(128.0 + noise).clamp(0, 255).to(device)


def data_free_uap(model: nn.Module, xi: float, size: int = 64, iterations: int = 100, batch: int = 8,
                  seed: int = 0, model_name: str = "", progress: Callable[[int], None] | None = None,
                  layers: Sequence[int] = (-1,)) -> UAP:
    """Data-free UAP: maximize the log mean activations of conv units ``layers`` (module docstring)
    under ||delta||_inf <= xi."""
    bound = _check_xi(xi)
    n_units = len(model.units)
    layers = sorted({int(i) % n_units for i in layers})
    device = next(model.parameters()).device
    base = neutral_inputs(batch, size, seed, device)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    # A random sign start: at delta = 0 on a flat input many ReLUs are off and the gradient is poor.
    delta = ((torch.randint(0, 2, (3, size, size), generator=gen) * 2 - 1) * bound).to(device, torch.float32)
    best, best_score, history = delta.clone(), -float("inf"), []
    with eval_mode(model):
        for it in range(iterations + 1):
            d = delta.detach().requires_grad_(True)
            with torch.enable_grad():
                means = conv_activation_means(model, (base + d).clamp(0, 255))
                score = sum(torch.log(means[i].clamp_min(1e-12)) for i in layers)
                (grad,) = torch.autograd.grad(score, d)
            value = float(score.detach())
            history.append(value)
            if value > best_score:
                best, best_score = delta.clone(), value
            if it == iterations:
                break
            delta = (delta + torch.sign(grad)).clamp(-bound, bound)
            if progress is not None:
                progress(1)
    return UAP(best.round().to(torch.int16).cpu(), float(xi), model_name, "data-free",
               DATA_FREE_OBJECTIVE.format(layers=[i + 1 for i in layers]), iterations, seed, history)


def data_driven_uap(model: nn.Module, images: torch.Tensor, xi: float, iterations: int = 20, batch: int = 64,
                    seed: int = 0, model_name: str = "", progress: Callable[[int], None] | None = None) -> UAP:
    """Data-driven UAP from patches ``images`` (uint8 [N, 3, S, S]): maximize CE against the clean decisions."""
    bound = _check_xi(xi)
    device = next(model.parameters()).device
    images = images.to(device)
    if images.shape[0] == 0:
        raise UAPError("a data-driven UAP needs at least one image")
    size = images.shape[-1]
    with eval_mode(model), torch.no_grad():
        clean = torch.cat([model(images[i:i + batch].float()).argmax(1) for i in range(0, images.shape[0], batch)])
    gen = torch.Generator().manual_seed(int(seed))
    delta = torch.zeros((3, size, size), device=device)
    best, best_fooled, history = delta.clone(), -1, []
    with eval_mode(model):
        for it in range(iterations + 1):
            order = torch.randperm(images.shape[0], generator=gen).to(device)
            grad_total = torch.zeros_like(delta)
            fooled = 0
            for i in range(0, images.shape[0], batch):
                idx = order[i:i + batch]
                d = delta.detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = model((images[idx].float() + d).clamp(0, 255))
                    loss = F.cross_entropy(logits, clean[idx], reduction="sum")
                    (grad,) = torch.autograd.grad(loss, d)
                fooled += int((logits.detach().argmax(1) != clean[idx]).sum())
                grad_total += grad
            history.append(fooled / images.shape[0])
            if fooled > best_fooled:
                best, best_fooled = delta.clone(), fooled
            if it == iterations:
                break
            delta = (delta + torch.sign(grad_total)).clamp(-bound, bound)
            if progress is not None:
                progress(1)
    return UAP(best.round().to(torch.int16).cpu(), float(xi), model_name, "data-driven", DATA_DRIVEN_OBJECTIVE,
               iterations, seed, history)


def random_sign_uap(xi: float, size: int = 64, seed: int = 0) -> UAP:
    """The baseline a UAP must beat: i.i.d. random signs times floor(xi)."""
    bound = _check_xi(xi)
    gen = torch.Generator().manual_seed(int(seed))
    delta = (torch.randint(0, 2, (3, size, size), generator=gen) * 2 - 1) * bound
    return UAP(delta.to(torch.int16), float(xi), "", "random-sign", "i.i.d. random sign noise of amplitude xi")


def fit(delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tile (repeat) then center-crop ``delta`` [3, h, w] to [3, height, width]."""
    _, h, w = delta.shape
    reps_h, reps_w = -(-height // h), -(-width // w)
    if reps_h > 1 or reps_w > 1:
        delta = delta.repeat(1, reps_h, reps_w)
    _, h, w = delta.shape
    top, left = (h - height) // 2, (w - width) // 2
    return delta[:, top:top + height, left:left + width]


def apply_uap(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """clip(x + delta, 0, 255) for a batch [B, 3, H, W]; float32, on the uint8 grid for integer delta."""
    d = fit(delta, x.shape[-2], x.shape[-1]).to(x.device, torch.float32)
    return (x.to(torch.float32) + d).clamp(0, 255)


def save_uap(uap: UAP, path: str | os.PathLike, force: bool = False) -> Path:
    """Write PATH (.png: delta + 128, uint8 RGB, text chunks with the record) and PATH.json."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UAPError(f"{path}: a UAP is saved as a .png file")
    side = path.with_suffix(".json")
    for p in (path, side):
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists (use --force to overwrite)")
    if uap.delta.abs().max() > 127:
        raise UAPError("delta exceeds the +-127 a PNG with offset 128 can hold")
    arr = (uap.delta.to(torch.int16) + UAP_OFFSET).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    info = PngImagePlugin.PngInfo()
    record = uap.info()
    for key in ("xi", "model", "method", "objective", "iterations", "seed"):
        info.add_text(f"recapfast:{key}", str(record[key]))
    info.add_text("recapfast:offset", str(UAP_OFFSET))
    info.add_text("recapfast:format", UAP_FORMAT)
    image = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    atomic.write_file(path, writer=lambda fh: image.save(fh, format="PNG", pnginfo=info), overwrite=force)
    record["offset"] = UAP_OFFSET
    record["file"] = path.name
    record["format"] = UAP_FORMAT
    atomic.write_json(side, record, overwrite=force)
    return path


def load_uap(path: str | os.PathLike) -> UAP:
    """Read a UAP PNG written by :func:`save_uap` (provenance chunks required; delta = pixel - 128)."""
    import numpy as np

    from recapfast.data.header import DecodeError, open_checked

    path = Path(path)
    if not path.is_file():
        raise UAPError(f"{path}: no such UAP file")
    try:
        with open(path, "rb") as fh, open_checked(fh, os.fstat(fh.fileno()).st_size, MAX_UAP_PIXELS) as im:
            if im.format != "PNG":
                raise UAPError(f"{path}: a UAP is a PNG written by `recapfast uap`, this is {im.format}")
            text = dict(getattr(im, "text", {}) or {})
            if im.mode != "RGB":
                raise UAPError(f"{path}: a UAP PNG is RGB, this one is {im.mode}")
            arr = np.array(im, dtype=np.int16)
    except DecodeError as err:
        raise UAPError(f"{path}: not a usable PNG ({err})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise UAPError(f"{path}: not a readable PNG ({err})") from err
    missing = [k for k in ("recapfast:xi", "recapfast:offset", "recapfast:method") if k not in text]
    if missing:
        raise UAPError(f"{path}: not a recapfast UAP (no {', '.join(missing)} provenance chunk; make one with "
                       f"`recapfast uap`)")
    try:
        offset = int(text["recapfast:offset"])
        xi = float(text["recapfast:xi"])
    except ValueError as err:
        raise UAPError(f"{path}: malformed recapfast metadata ({err})") from err
    if offset != UAP_OFFSET or not 0 <= xi <= 127:
        raise UAPError(f"{path}: malformed recapfast metadata (offset {offset}, xi {xi:g}; expected offset "
                       f"{UAP_OFFSET} and xi in [0, 127])")
    delta = torch.from_numpy(arr - offset).permute(2, 0, 1).contiguous()
    if delta.numel() and int(delta.abs().max()) > xi:
        raise UAPError(f"{path}: delta reaches {int(delta.abs().max())} grey levels, above its xi {xi:g}")
    return UAP(delta.to(torch.int16), xi, text.get("recapfast:model", ""), text.get("recapfast:method", "unknown"),
               text.get("recapfast:objective", ""), int(text.get("recapfast:iterations", 0) or 0),
               int(text.get("recapfast:seed", 0) or 0))


def load_patches(root, size: int = 64, limit: int | None = None, labelled: bool | None = None,
                 seed: int = 0) -> torch.Tensor:
    """Center-crop patches (uint8 [N, 3, size, size]) of a folder for a data-driven UAP (sorted, seeded subset)."""
    from recapfast.data.folder import CLASS_NAMES, DecodeError, decode, discover, to_patches

    root = Path(root)
    if labelled is None:
        labelled = any((root / c).is_dir() for c in CLASS_NAMES)
    samples = discover(root, labelled=labelled)
    if limit is not None and len(samples) > limit:
        gen = torch.Generator().manual_seed(int(seed))
        keep = sorted(torch.randperm(len(samples), generator=gen)[:limit].tolist())
        samples = [samples[i] for i in keep]
    patches = []
    for s in samples:
        try:
            img, _ = decode(s.path)
            patches.append(to_patches(img, size))
        except DecodeError:
            continue
    if not patches:
        raise UAPError(f"{root}: no usable images of at least {size}x{size}")
    return torch.cat(patches)


def fooling_rate(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, batch: int = 256) -> float:
    """Fraction of images whose prediction changes when ``delta`` is added."""
    with eval_mode(model), torch.no_grad():
        changed = 0
        for i in range(0, x.shape[0], batch):
            xb = x[i:i + batch]
            changed += int((model(xb.float()).argmax(1) != model(apply_uap(xb, delta)).argmax(1)).sum())
    return changed / max(x.shape[0], 1)


__all__ = ["UAP", "UAPError", "data_free_uap", "data_driven_uap", "random_sign_uap", "save_uap", "load_uap",
           "apply_uap", "fit", "fooling_rate", "conv_activation_means", "neutral_inputs", "load_patches"]

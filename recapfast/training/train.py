"""Baseline (Yang) and robust training of LaplacianCNN: Zhao et al. 2018's eq. 5-7 (``defense="paper"``, below),
fast-at and TRADES (``recapfast.training.defenses``).

Robust objective, per mini-batch of m images whose first k are replaced by FGSM images made
with the current model (eval mode: BatchNorm running statistics are not updated) at an eps
drawn per image from U[eps_min, eps_max] and quantized to the uint8 grid:

    L(x, y)  = J(x, y) + lambda * ||grad_x J(x, y)||_2                 (eq. 5, per image)
    Loss     = ( sum_clean L + alpha * sum_adv L ) / m                   (eq. 7, divided by m)

grad_x J is the gradient of the batch's summed cross-entropy with respect to each image (in
train mode BatchNorm couples the images of a batch; taking the per-image slice of the summed
loss's gradient is the usual batched form).  It is computed with ``create_graph=True`` so
the penalty's gradient reaches the weights (double backprop).  Pixel units: images are
[0, 255], so lambda is on that scale (see docs/training.md for the measured choice).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from recapfast.io import atomic
from recapfast.attacks.single_step import input_gradients, signed_step
from recapfast.runtime import settings as runtime_settings
from recapfast.models.archs import ARCHS, build
from recapfast.data.folder import CLASS_NAMES, DataError, PatchDataset, discover, make_loader
from recapfast.data.splits import holdout_split, manifest_hash
from recapfast import distributed
from recapfast.models.laplacian import ACTIVATIONS, DEFAULT_WIDTHS, LaplacianCNN
from recapfast.training.defenses import DEFENSES, adversarial_eps, defense_loss
from recapfast.training.selection import criterion, log_line, score, selection_matches, validate


PENALTY_MODES = ("exact", "fd")
VAL_ATTACKS = ("apgd", "fgsm")


@dataclass
class TrainConfig:
    iters: int = 100_000
    batch_size: int = 64
    lr: float = 1e-4
    lr_decay: float = 0.9
    lr_step: int = 10_000
    robust: bool = False            # True: a robust defence; robust=True alone means defense="paper" (eq. 5-7)
    defense: str = "none"           # none (baseline) | paper (eq. 5-7) | fast-at | trades (recapfast.training.defenses)
    penalty: float = 10.0           # lambda of eq. 5 (pixel units; chosen by the validation sweep in docs/training.md); robust only
    penalty_mode: str = "exact"     # "exact": double backprop (eq. 5); "fd": finite difference (fd_robust_loss)
    adv_count: int = 32             # k of eq. 7
    adv_weight: float = 0.2         # alpha of eq. 7
    eps_min: float = 1.0
    eps_max: float = 5.0
    fast_at_step: float = 1.25      # fast-at's FGSM step, in units of each image's eps
    trades_beta: float = 6.0        # TRADES' beta (the paper's default)
    trades_steps: int = 10          # k of TRADES' PGD-k inner maximization
    trades_step: float | None = None  # its step, in units of eps (None: 2.5 / trades_steps)
    val_every: int = 500
    val_eps: float = 2.0
    val_attack: str = "apgd"        # robust defences' selection attack: apgd (APGD-CE, val_attack_steps) or fgsm
    val_attack_steps: int = 10
    val_fraction: float = 0.1       # held out of the training folder when no --val folder is given
    size: int = 64
    seed: int = 0
    widths: tuple = DEFAULT_WIDTHS
    arch: str = "laplacian"         # recapfast.models.archs: laplacian, bayar, meso4
    init: str | None = None         # start from this checkpoint's weights (bundled name or .safetensors path)
    activation: str | None = None   # LaplacianCNN's activation (None: relu, or --init's checkpoint's)

    def __post_init__(self) -> None:
        if self.robust and self.defense == "none":
            self.defense = "paper"
        self.robust = self.defense != "none"

    def validate(self) -> None:
        checks = [
            (self.defense in DEFENSES, f"--defense must be one of {', '.join(DEFENSES[1:])}, got {self.defense!r}"),
            (self.activation is None or self.activation in ACTIVATIONS,
             f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"),
            (self.activation is None or self.arch == "laplacian",
             f"--activation is for the laplacian architecture, not {self.arch!r}"),
            (self.trades_beta >= 0, f"--trades-beta must be >= 0, got {self.trades_beta}"),
            (self.trades_steps >= 1, f"--trades-steps must be >= 1, got {self.trades_steps}"),
            (self.trades_step is None or self.trades_step > 0,
             f"--trades-step-size must be > 0, got {self.trades_step}"),
            (self.fast_at_step > 0, f"--fast-at-step must be > 0, got {self.fast_at_step}"),
            (self.val_attack in VAL_ATTACKS, f"--val-attack must be one of {', '.join(VAL_ATTACKS)}, "
                                             f"got {self.val_attack!r}"),
            (self.val_attack_steps >= 1, f"--val-attack-steps must be >= 1, got {self.val_attack_steps}"),
            (0 < self.val_eps <= 255, f"--val-eps must be in (0, 255], got {self.val_eps}"),
            (self.iters >= 0, f"--iters must be >= 0, got {self.iters}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.adv_count <= (self.batch_size if self.defense == "paper" else self.adv_count), f"--adv-count must be in [0, batch size], got {self.adv_count}"),
            (0 < self.eps_min <= self.eps_max, f"eps range must satisfy 0 < min <= max, got {self.eps_min}..{self.eps_max}"),
            (self.penalty >= 0, f"--penalty must be >= 0, got {self.penalty}"),
            (self.penalty_mode in PENALTY_MODES, f"--penalty-mode must be one of {', '.join(PENALTY_MODES)}, "
                                                 f"got {self.penalty_mode!r}"),
            (self.val_every >= 1, f"--val-every must be >= 1, got {self.val_every}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (self.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(message)


@dataclass
class TrainResult:
    checkpoint: Path
    iterations: int
    best: dict
    history: list = field(default_factory=list)
    seconds: float = 0.0


class StepBatches:
    """Batch sampler: step i uses slice i of the seeded permutation of epoch i // steps_per_epoch.

    Deterministic and resumable: starting at ``start`` reproduces exactly the batches an
    uninterrupted run would have seen from that step on.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._perm = -1, None

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def indices(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed((self.seed * 100_003 + epoch) % 2 ** 64))
            self._epoch = epoch
        chunk = self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]
        if chunk.numel() < min(self.batch_size, self.n):  # n < batch size: wrap around
            chunk = torch.cat([chunk, self._perm[: self.batch_size - chunk.numel()]])
        return chunk.tolist()

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.indices(step)


def fgsm_mixed_batch(model: LaplacianCNN, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                     grad: torch.Tensor | None = None) -> torch.Tensor:
    """The first ``len(eps)`` images replaced by FGSM images at their own eps, on the uint8 grid.

    ``grad``: their FGSM input gradient when already computed (else taken here, eval mode, on those images).
    """
    k = int(eps.numel())
    if k == 0:
        return x
    if grad is None:
        grad = input_gradients(model, x[:k], y[:k], ("fgsm",))[1]["fgsm"]
    return torch.cat([signed_step(x[:k], grad[:k], eps), x[k:]])      # per-image eps: no host sync


def robust_loss(model: LaplacianCNN, xb: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                penalty: float) -> tuple[torch.Tensor, dict]:
    """Eq. 5-7: weighted per-image (CE + lambda * ||grad_x CE||_2), divided by the batch size.

    The stats are detached 0-dim tensors on the loss's device (reading one, e.g. float(), syncs the GPU).
    """
    xb = xb.detach().requires_grad_(penalty > 0)
    logits = model(xb)
    ce = F.cross_entropy(logits, y, reduction="none")
    per_image = ce
    stats = {"ce": ce.detach().mean()}
    if penalty > 0:
        (g,) = torch.autograd.grad(ce.sum(), xb, create_graph=True)
        # The tiny constant keeps sqrt differentiable where a gradient is exactly zero.
        norm = torch.sqrt(g.flatten(1).square().sum(1) + 1e-20)
        per_image = ce + penalty * norm
        stats["grad_norm"] = norm.detach().mean()
    return (weights * per_image).sum() / xb.shape[0], stats


def fd_robust_loss(model: LaplacianCNN, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor,
                   penalty: float) -> tuple[torch.Tensor, dict]:
    """The finite-difference variant of eq. 5-7 (``penalty_mode="fd"``): no double backprop.

    Finlay & Oberman (2019) replace the input-gradient norm by a finite difference along the
    normalized gradient d = g / ||g||_2 (g = grad_x J, detached):  ||g||_2 ~ (J(x + h d) - J(x)) / h.
    With the step h equal to lambda, eq. 5 becomes J + lambda * (J(x + h d) - J) / h = J(x + lambda d):
    each image's loss is the cross-entropy at the image moved lambda pixel units along its own
    gradient direction (equal to eq. 5 to first order in lambda).  One eval-mode forward+backward
    over the clean batch gives every g: the first k make the FGSM images (as in exact mode) and,
    for them too, d is the clean image's gradient direction (an approximation: exact mode
    penalizes the gradient at the FGSM image).  Cost: one input-gradient pass + one plain step.
    """
    # The direction pass is the FGSM input gradient (eval mode), on the fast path for a LaplacianCNN.
    g = input_gradients(model, x, y, ("fgsm",))[1]["fgsm"]
    xb = fgsm_mixed_batch(model, x, y, eps, grad=g)
    norm = g.flatten(1).norm(dim=1)
    direction = g / norm.clamp_min(1e-30).view(-1, 1, 1, 1)
    ce = F.cross_entropy(model(xb + penalty * direction), y, reduction="none")
    return (weights * ce).sum() / x.shape[0], {"ce": ce.detach().mean(), "grad_norm": norm.detach().mean()}


def training_loss(model, x, y, config: TrainConfig, step: int, rank: int = 0, world: int = 1
                  ) -> tuple[torch.Tensor, dict]:
    """The loss of one step: plain CE for the baseline, eq. 5-7 for ``paper``, ``defenses.defense_loss`` else.

    Nothing here waits for the GPU: the stats are detached device tensors, read only when logging.

    Under torchrun ``x`` is this rank's slice ``batch[rank::world]`` of the global batch: its first
    images are the rank's share of the global first k (FGSM) images.
    """
    if not config.robust:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": loss.detach()}
    if config.defense != "paper":
        return defense_loss(model, x, y, config, step, rank, world)
    eps = adversarial_eps(config, step, x.shape[0] * world, rank, world)
    if config.penalty_mode == "fd":
        weights = torch.ones(x.shape[0], device=x.device)
        weights[:eps.numel()] = config.adv_weight
        return fd_robust_loss(model, x, y, eps, weights, config.penalty)
    xb = fgsm_mixed_batch(model, x, y, eps)
    weights = torch.ones(x.shape[0], device=x.device)
    weights[:eps.numel()] = config.adv_weight
    return robust_loss(model, xb, y, weights, config.penalty)


def resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def _save_resume(path: Path, state: dict) -> None:
    atomic.write_file(path, writer=lambda fh: torch.save(state, fh))


def train(
    train_dir,
    out,
    config: TrainConfig,
    val_dir=None,
    device: str | torch.device = "cpu",
    workers: int = 0,
    resume: bool = False,
    class_names: Sequence[str] = CLASS_NAMES,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
    force: bool = False,
) -> TrainResult:
    """Train a LaplacianCNN on a labelled folder; writes OUT (.safetensors, best) + OUT.json + resume state."""
    config.validate()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    if out.suffix != ".safetensors":
        raise DataError(f"--out {out}: checkpoints are written as .safetensors files")
    samples = discover(train_dir, class_names)
    if val_dir is not None:
        train_samples, val_samples = samples, discover(val_dir, class_names)
    else:
        train_samples, val_samples = holdout_split(samples, config.val_fraction, config.seed)
    if len({s.label for s in train_samples}) < 2:
        raise DataError(f"{train_dir}: training needs images of both classes ({' and '.join(class_names)})")
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = _initial_model(config).to(device)
    # Under torchrun: data-parallel over the ranks (docs/screening.md, "Several processes and machines"); one rank is a no-op.
    dist_info = distributed.current()
    if dist_info.enabled:
        if config.batch_size % dist_info.world or config.batch_size < 2 * dist_info.world:
            raise DataError(f"--batch-size {config.batch_size} must be a multiple of the {dist_info.world} ranks "
                            f"and give each rank >= 2 images")
        distributed.broadcast_module_(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_decay)
    start, best_score, best, history = 0, -math.inf, {}, []
    state_file = resume_path(out)
    if resume:
        if not state_file.is_file():
            raise DataError(f"--resume: no resume state {state_file} (train without --resume to start)")
        state = torch.load(state_file, map_location=device, weights_only=True)
        saved = state["config"]
        # A field newer than the saved state compares as its default (e.g. penalty_mode); a state from before
        # --defense: eq. 5-7 when robust, selected by FGSM accuracy; before --activation: ReLU for a laplacian.
        older = _plain(asdict(TrainConfig(robust=bool(saved.get("robust")))))
        older.update({"val_attack": "fgsm"} if saved.get("robust") else {},
                     activation="relu" if saved.get("arch", "laplacian") == "laplacian" else None)
        mismatched = [f.name for f in fields(TrainConfig)
                      if f.name not in ("iters", "val_every")
                      and saved.get(f.name, older[f.name]) != _plain(getattr(config, f.name))]
        if mismatched:
            raise DataError(f"--resume: {state_file} was made with other settings ({', '.join(mismatched)})")
        if not selection_matches(state["best"], config):
            raise DataError(f"--resume: {state_file}'s best checkpoint was kept by the earlier selection rule (the "
                            f"patch average of clean and worst case, without per-class numbers); start over with "
                            f"--force")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best_score, best, history = state["step"], state["best_score"], state["best"], state["history"]
        log(f"recapfast: resuming {out} at iteration {start}")
    elif out.exists() or state_file.exists():
        if not force:
            raise DataError(f"--out {out}: exists already (use --resume to continue it, or --force to start over)")
        if dist_info.is_main:      # --force: only now, after every argument and the data were checked
            for path in (out, out.with_suffix(".json"), state_file):
                atomic.remove(path)
    data_info = {"train_dir": str(train_dir), "train_files": len(train_samples), "val_files": len(val_samples),
                 "val_dir": None if val_dir is None else str(val_dir),
                 "manifest_sha256": manifest_hash(train_samples, train_dir)}
    train_set = PatchDataset(train_samples, config.size)
    val_loader = make_loader(PatchDataset(val_samples, config.size), 128, 0)
    sampler = StepBatches(len(train_set), config.batch_size, config.seed, start, config.iters)
    loader = make_loader(train_set, config.batch_size, workers,
                         batch_sampler=distributed.RankSlices(sampler, dist_info) if dist_info.enabled else sampler)
    if dist_info.is_main:
        log(f"recapfast: defense {config.defense}; keeping the checkpoint of {criterion(config)['rule']}"
            + (f" (APGD-CE {config.val_attack_steps} steps, 1 restart)" if "attack" in criterion(config) else ""))
    t0 = time.perf_counter()
    step, running = start, []

    def checkpoint_now(step: int) -> None:
        nonlocal best_score, best
        metrics = validate(model, val_loader, config)
        losses = distributed.mean_over_ranks_each(running)   # the only sync and all-reduce for the losses
        metrics.update(iteration=step, loss=sum(losses) / max(len(losses), 1), lr=optimizer.param_groups[0]["lr"])
        history.append(metrics)
        running.clear()
        s = score(metrics, config)
        mark = ""
        if s > best_score:
            best_score, best, mark = s, dict(metrics), " (best)"
        if mark and dist_info.is_main:
            from recapfast.models.zoo import save_model

            save_model(model, out, {"training": _plain(asdict(config)), "selection": criterion(config),
                                    "metrics": best, "data": data_info,
                                    "history": history, "compute": runtime_settings()})
        if not dist_info.is_main:
            return
        log(f"iter {step}: loss {metrics['loss']:.4f}  {log_line(metrics, config)}{mark}")
        _save_resume(state_file, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "step": step, "best_score": best_score,
                                  "best": best, "history": history, "config": _plain(asdict(config))})

    model.train()
    for batch in loader:
        x = batch.x.to(device, non_blocking=True).to(torch.float32)
        y = batch.y.to(device, non_blocking=True)
        if x.shape[0] >= 2:
            loss, _ = training_loss(model, x, y, config, step, dist_info.rank, dist_info.world)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients_(model)
            optimizer.step()
            if hasattr(model, "constrain_"):        # e.g. BayarCNN's constrained first layer
                model.constrain_()
            distributed.average_buffers_(model)
            running.append(loss.detach())   # read (one sync, one all-reduce) only when logging is due
        scheduler.step()
        step += 1
        if progress is not None:
            progress(1)
        if step % config.val_every == 0 or step == config.iters:
            checkpoint_now(step)
            model.train()
    if step == start and not out.exists():
        checkpoint_now(step)
    return TrainResult(out, step, best, history, time.perf_counter() - t0)


def init_architecture(init: str) -> tuple[str, tuple]:
    """(arch as ``--arch`` names it, widths) of the checkpoint ``init`` (a bundled name or a .safetensors path)."""
    from recapfast.models.archs import CONFIG_NAMES
    from recapfast.models.zoo import load_recapfast

    spec = load_recapfast(init, "cpu").config()
    return CONFIG_NAMES[spec["arch"]], tuple(spec["widths"])


def _initial_model(config: TrainConfig) -> torch.nn.Module:
    """A fresh ``config.arch`` model, or (``config.init``: a bundled name or a checkpoint of any arch) the model to
    fine-tune; ``config`` takes its arch, widths and (unless set) activation.  An explicit activation other than the
    checkpoint's fine-tunes its weights under that activation (e.g. the ReLU baseline as a softplus model)."""
    if config.init is None:
        if config.arch == "laplacian":
            config.activation = config.activation or "relu"
            return LaplacianCNN(config.widths, activation=config.activation)
        return build(config.arch, config.widths)
    from recapfast.models.archs import CONFIG_NAMES
    from recapfast.models.zoo import load_recapfast

    model = load_recapfast(config.init, "cpu")
    spec = model.config()
    arch, widths = CONFIG_NAMES[spec["arch"]], tuple(spec["widths"])
    # The config's arch/widths follow the checkpoint unless they were set to something else explicitly
    # (the arch's defaults mean "unset", as the CLI passes them when --init is given).
    if tuple(config.widths) != widths and tuple(config.widths) != tuple(ARCHS[config.arch][1]):
        raise DataError(f"--init {config.init}: widths {widths} differ from --widths {tuple(config.widths)}")
    if config.arch not in (arch, "laplacian"):       # laplacian: the default, "unset"
        raise DataError(f"--init {config.init}: a {arch} checkpoint, not --arch {config.arch}")
    if config.activation is not None and arch != "laplacian":
        raise DataError(f"--init {config.init}: --activation is for the laplacian architecture, not {arch!r}")
    config.arch, config.widths = arch, widths
    if arch == "laplacian":
        activation = config.activation or spec.get("activation", "relu")
        if activation != model.activation:
            swapped = LaplacianCNN(widths, activation=activation)
            swapped.load_state_dict(model.state_dict())
            model = swapped
        config.activation = activation
    return model.train()


def _plain(value):
    """Config values as JSON/torch.load-safe plain types (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

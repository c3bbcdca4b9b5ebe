"""The evaluation engine: stream a labelled folder, sweep attacks x eps, accumulate on device.

Counters live on the model's device and are read back once at the end (no per-batch host
sync).  The unit of evaluation is the patch (one per file with center crop, several with
``tile``); every patch carries its file's label.

Metrics per (attack, eps):
- adversarial accuracy: correct adversarial predictions / patches;
- attack success rate: patches correct when clean and wrong under attack / patches correct when clean;
- mean L-inf and L2 of the perturbation (pixel units), mean PSNR in dB over patches whose
  perturbation is not all zero (an untouched patch has infinite PSNR and is counted in ``unchanged``);
- mean SSIM (Wang et al. 2004, ``recapfast.metrics.ssim``) over all patches (NaN below 11x11).

Single-step attacks (fgsm, llcm) share one gradient across all eps (``recapfast.sweep``); the
iterative ones (bim, illc, pgd, mifgsm; ``recapfast.attacks.iterative``) run once per eps, because
their iterates depend on eps.  With a universal perturbation (``uap``), every patch is also
evaluated as clip(patch + delta): fooling rate = patches whose prediction changes / patches.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from recapfast.attacks.single_step import ATTACKS, sweep
from recapfast.attacks.iterative import ITERATIVE_ATTACKS, IterativeConfig, sweep_iterative
from recapfast.metrics import METRIC_LEVELS, one_hot, ssim as ssim_metric
from recapfast.data.folder import CLASS_NAMES, Batch, PatchDataset, discover, make_loader


@dataclass
class AttackCell:
    attack: str
    eps: float
    accuracy: float
    success_rate: float
    correct: int
    flipped: int
    accuracy_per_class: list[float]
    mean_linf: float
    mean_l2: float
    mean_psnr: float
    unchanged: int | None          # None when the perturbation metrics were not computed (metrics="none")
    mean_ssim: float = float("nan")


@dataclass
class EvalResult:
    """Clean and adversarial accuracy of one model on one data set."""

    model: str
    eps: list[float]
    attacks: list[str]
    patch_size: int
    files: int
    patches: int
    patches_per_class: list[int]
    clean_correct: int
    clean_accuracy: float
    clean_accuracy_per_class: list[float]
    cells: list[AttackCell]
    errors: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    quantized: bool = True
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    iterative: dict = field(default_factory=dict)
    uap: dict | None = None
    metrics: str = "full"          # perturbation metrics computed: full (L-inf, L2, PSNR, SSIM), fast (no SSIM), none
    settings: dict = field(default_factory=dict)   # threads and op backend of the run (recapfast.runtime)
    # Filled by recapfast.engine.trust.TrustAccumulator (eval's detection metrics, masking checks, worst case, JPEG).
    detection: dict | None = None
    masking: dict | None = None
    worst_case: dict | None = None
    jpeg: list | None = None
    attack_settings: dict = field(default_factory=dict)
    # Patches whose clean logits held NaN or Inf (after the first batch, which must be finite): left out of every
    # count above, so they never become accuracies.
    nonfinite: int = 0
    # sha256 of the weights file evaluated (--weights, a .safetensors / .pt2 --model, or a bundled name's file);
    # None for a model that is not one file.  Lets committed numbers be tied to the weights they came from.
    model_sha256: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else float("nan")

    def cell(self, attack: str, eps: float) -> AttackCell:
        index = self.__dict__.get("_cell_index")     # not a field: asdict and the JSON never see it
        if index is None or len(index) != len(self.cells):
            index = self.__dict__["_cell_index"] = {(c.attack, c.eps): c for c in self.cells}
        try:
            return index[(attack, float(eps))]      # a dict: rendering 10000 eps is linear, not quadratic
        except KeyError:
            raise KeyError(f"no result for attack {attack!r} at eps {eps}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_second"] = self.images_per_second
        return d

    def to_json(self) -> str:
        from recapfast.reporting.tables import result_json

        return result_json(self)

    def to_markdown(self) -> str:
        from recapfast.reporting.tables import result_markdown

        return result_markdown(self)

    def to_csv(self) -> str:
        from recapfast.reporting.tables import result_csv

        return result_csv(self)


class Evaluator:
    """Accumulates sweep results batch by batch; ``result()`` reads the counters back once."""

    # The on-device counters that ``distributed.reduce_evaluator`` sums over the ranks: each is a sum over the
    # rank's own patches, so the sum over the ranks is the whole data set's.  A tensor attribute not named
    # here makes that reduction refuse to run (nothing non-additive is ever summed by accident).
    SUMMED = ("per_class", "clean_correct", "adv_correct", "flipped", "linf_sum", "l2_sum", "psnr_sum", "psnr_count",
              "ssim_sum", "uap_correct", "uap_fooled", "uap_dist", "uap_changed", "nonfinite")

    def __init__(self, model: nn.Module, eps: Sequence[float] = (1, 2, 3, 4, 5),
                 attacks: Sequence[str] = ATTACKS, quantize: bool = True, num_classes: int = 2,
                 iterative: IterativeConfig | None = None, uap=None, metrics: str = "full", trust=None,
                 model_name: str = ""):
        from recapfast.engine.trust import EXTRA_ATTACKS, TrustAccumulator, TrustConfig

        if metrics not in METRIC_LEVELS:
            raise ValueError(f"metrics must be one of {', '.join(METRIC_LEVELS)}, got {metrics!r}")
        self.metrics = metrics
        self.model = model
        unknown = [a for a in attacks if a not in ATTACKS + ITERATIVE_ATTACKS + EXTRA_ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(ATTACKS + ITERATIVE_ATTACKS + EXTRA_ATTACKS)}")
        self.iterative = iterative or IterativeConfig()
        self.uap = uap                 # a recapfast.attacks.universal.UAP or None
        self.eps = [float(e) for e in eps]
        self.attacks = list(attacks)
        self.quantize = quantize
        device = next(model.parameters()).device
        a, e = len(self.attacks), len(self.eps)
        z = lambda *shape, dtype=torch.long: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.device = device
        self.per_class = z(num_classes)
        self.clean_correct = z(num_classes)
        self.adv_correct = z(a, e, num_classes)
        self.flipped = z(a, e)
        self.linf_sum = z(a, e, dtype=torch.float64)
        self.l2_sum = z(a, e, dtype=torch.float64)
        self.psnr_sum = z(a, e, dtype=torch.float64)
        self.psnr_count = z(a, e)
        self.ssim_sum = z(a, e, dtype=torch.float64)
        self.uap_correct = z(num_classes)
        self.uap_fooled = z(1)
        self.uap_dist = z(4, dtype=torch.float64)      # sums of L-inf, L2, PSNR (changed patches), SSIM
        self.uap_changed = z(1)
        self.nonfinite = z(1)          # patches with NaN/Inf clean logits, left out of every count
        self.patch_size = 0
        self.model_name = model_name
        self._checked = False          # the first batch checks the model's output (shape, finite)
        # apgd/square, detection metrics, masking checks, JPEG survival (recapfast.engine.trust); not a tensor (and
        # not in SUMMED), so distributed.reduce_evaluator leaves it to its own reduce().
        if trust is None and any(a in EXTRA_ATTACKS for a in self.attacks):
            trust = TrustConfig(detection=False, gradients=False)
        self.trust = None if trust is None else \
            TrustAccumulator(model, self.attacks, self.eps, quantize, num_classes, device, trust)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        self.patch_size = int(x.shape[-1])
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        single = [a for a in self.attacks if a in ATTACKS]
        iterative = [a for a in self.attacks if a in ITERATIVE_ATTACKS]
        keep = self.trust is not None      # the trust checks (JPEG, extra logits) read the adversarial images
        try:
            res = sweep(self.model, x, y, self.eps, single, quantize=self.quantize, metrics=self.metrics,
                        return_images=keep)
        except Exception:
            if not self._checked:
                self._check_model(x, bad=False)   # a model whose output is wrong: one line saying what
            raise
        if not self._checked:             # the first batch: the sweep's own clean logits, no extra forward
            if res.clean_logits.shape != (x.shape[0], self.per_class.numel()) or \
                    not bool(torch.isfinite(res.clean_logits).all()):
                self._check_model(x, bad=True)
            self._checked = True
        finite = torch.isfinite(res.clean_logits).all(1)
        if not bool(finite.all()):      # one boolean read per batch; a rerun only for a batch with NaN/Inf logits
            self.nonfinite += (~finite).sum()
            if bool(finite.any()):
                self.update(x[finite], y[finite])
            return
        if iterative:
            more = sweep_iterative(self.model, x, y, self.eps, iterative, self.quantize, self.iterative,
                                   clean_logits=res.clean_logits, metrics=self.metrics, return_images=keep)
            for part in ("predictions", "linf", "l2", "mse", "ssim", "images"):
                getattr(res, part).update(getattr(more, part))
        if self.trust is not None:
            self.trust.update(x, y, res, self.metrics)
        onehot = one_hot(y, self.per_class.numel())
        self.per_class += onehot.sum(0)
        clean_ok = res.clean_predictions == y
        self.clean_correct += (onehot * clean_ok.unsqueeze(1)).sum(0)
        for i, name in enumerate(self.attacks):
            adv_ok = res.predictions[name] == y.unsqueeze(0)                      # [E, B]
            self.adv_correct[i] += (adv_ok.unsqueeze(-1) * onehot.unsqueeze(0)).sum(1)
            self.flipped[i] += (clean_ok.unsqueeze(0) & ~adv_ok).sum(1)
            self.linf_sum[i] += res.linf[name].double().sum(1)
            self.l2_sum[i] += res.l2[name].double().sum(1)
            mse = res.mse[name].double()
            changed = mse > 0
            psnr = 10.0 * torch.log10((255.0 ** 2) / mse.clamp_min(1e-30))
            self.psnr_sum[i] += torch.where(changed, psnr, torch.zeros_like(psnr)).sum(1)
            self.psnr_count[i] += changed.sum(1)
            self.ssim_sum[i] += res.ssim[name].nan_to_num(0.0).sum(1)
        if self.uap is not None:
            self._update_uap(x, y, onehot, res.clean_predictions)

    def _check_model(self, x: torch.Tensor, bad: bool) -> None:
        """The one-line ModelOutputError that says what is wrong with the model's output on ``x`` (the first batch),
        if anything; ``bad``: the sweep's clean logits were already found wrong (raise in any case)."""
        from recapfast.models.pixels import ModelOutputError, check_logits

        what = f"--model {self.model_name}" if self.model_name else "the model"
        check_logits(self.model, x, what, self.per_class.numel())
        if not bad:
            return
        raise ModelOutputError(f"{what}: returned non-finite logits (NaN or Inf) on the first batch "
                               f"({'x'.join(map(str, x.shape))})")

    def _update_uap(self, x, y, onehot, clean_pred) -> None:
        from recapfast.attacks.universal import apply_uap

        x_u = apply_uap(x, self.uap.delta)
        with torch.inference_mode():
            from recapfast.attacks.single_step import eval_mode

            with eval_mode(self.model):
                pred = self.model(x_u).argmax(1)
        self.uap_correct += (onehot * (pred == y).unsqueeze(1)).sum(0)
        self.uap_fooled += (pred != clean_pred).sum()
        diff = (x_u - x.to(torch.float32)).flatten(1).double()
        mse = diff.square().mean(1)
        changed = mse > 0
        psnr = torch.where(changed, 10.0 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-30)), torch.zeros_like(mse))
        self.uap_dist += torch.stack([diff.abs().amax(1).sum() if diff.shape[1] else diff.new_zeros(()),
                                      diff.norm(dim=1).sum(), psnr.sum(),
                                      ssim_metric(x_u, x, dtype=torch.float32).nan_to_num(0.0).sum()])
        self.uap_changed += changed.sum()

    def result(self, model_name: str = "", files: int = 0, errors=(), notes=(), seconds: float = 0.0) -> EvalResult:
        per_class = self.per_class.cpu().tolist()
        clean = self.clean_correct.cpu().tolist()
        adv = self.adv_correct.cpu().tolist()
        flipped = self.flipped.cpu().tolist()
        linf, l2 = self.linf_sum.cpu().tolist(), self.l2_sum.cpu().tolist()
        psnr, psnr_n = self.psnr_sum.cpu().tolist(), self.psnr_count.cpu().tolist()
        ssim_sum = self.ssim_sum.cpu().tolist()
        ssim_ok = self.patch_size >= 11 and self.metrics == "full"
        measured = self.metrics != "none"
        total, clean_total = sum(per_class), sum(clean)
        ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
        cells = []
        for i, name in enumerate(self.attacks):
            for j, e in enumerate(self.eps):
                correct = sum(adv[i][j])
                cells.append(AttackCell(
                    attack=name, eps=e, accuracy=ratio(correct, total),
                    success_rate=ratio(flipped[i][j], clean_total), correct=correct, flipped=flipped[i][j],
                    accuracy_per_class=[ratio(c, n) for c, n in zip(adv[i][j], per_class)],
                    mean_linf=ratio(linf[i][j], total), mean_l2=ratio(l2[i][j], total),
                    mean_psnr=ratio(psnr[i][j], psnr_n[i][j]) if measured else float("nan"),
                    unchanged=total - psnr_n[i][j] if measured else None,
                    mean_ssim=ratio(ssim_sum[i][j], total) if ssim_ok else float("nan")))
        uap = None
        if self.uap is not None:
            u_correct = self.uap_correct.cpu().tolist()
            fooled, changed = int(self.uap_fooled.item()), int(self.uap_changed.item())
            d_linf, d_l2, d_psnr, d_ssim = self.uap_dist.cpu().tolist()
            uap = dict(self.uap.info(), fooling_rate=ratio(fooled, total), fooled=fooled,
                       accuracy=ratio(sum(u_correct), total), correct=sum(u_correct),
                       accuracy_per_class=[ratio(c, n) for c, n in zip(u_correct, per_class)],
                       mean_linf=ratio(d_linf, total), mean_l2=ratio(d_l2, total), mean_psnr=ratio(d_psnr, changed),
                       mean_ssim=ratio(d_ssim, total) if ssim_ok else float("nan"))
            uap.pop("history", None)
        iterative = {}
        if any(a in ITERATIVE_ATTACKS for a in self.attacks):
            from recapfast.attacks.iterative import default_steps

            c = self.iterative
            iterative = {"steps": c.steps if c.steps is not None else {f"{e:g}": default_steps(e) for e in self.eps},
                         "step_size": 1.0 if c.step_size is None else c.step_size,
                         "pgd_random_start": c.random_start, "pgd_seed": c.seed, "mifgsm_decay": c.decay,
                         "illc_target": "least likely class of the clean image (fixed for all steps)"}
        result = EvalResult(
            model=model_name, eps=self.eps, attacks=self.attacks, patch_size=self.patch_size, files=files,
            patches=total, patches_per_class=per_class, clean_correct=clean_total,
            clean_accuracy=ratio(clean_total, total),
            clean_accuracy_per_class=[ratio(c, n) for c, n in zip(clean, per_class)],
            cells=cells, errors=list(errors), notes=list(notes), seconds=seconds, quantized=self.quantize,
            iterative=iterative, uap=uap, metrics=self.metrics, nonfinite=int(self.nonfinite.item()))
        if self.trust is not None:
            self.trust.finish(result)
        return result


def report_error(path: str, reason: str, stream=None) -> None:
    print(f"recapfast: skipped {path}: {reason}", file=stream or sys.stderr)


def evaluate_folder(
    model: nn.Module,
    root,
    eps: Sequence[float] = (1, 2, 3, 4, 5),
    attacks: Sequence[str] = ATTACKS,
    size: int = 64,
    tile: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    quantize: bool = True,
    model_name: str = "",
    class_names: Sequence[str] = CLASS_NAMES,
    progress: Callable[[int], None] | None = None,
    on_error: Callable[[str, str], None] | None = report_error,
    samples=None,
    iterative: IterativeConfig | None = None,
    uap=None,
    metrics: str = "full",
    trust=None,
) -> EvalResult:
    """Evaluate ``model`` on a labelled folder, streaming it in batches of ``batch_size`` files.

    ``metrics``: perturbation metrics per (attack, eps): "full" (L-inf, L2, PSNR, SSIM), "fast" (no
    SSIM), "none" (accuracy only).
    """
    samples = discover(root, class_names) if samples is None else samples
    from recapfast import distributed  # under torchrun: this rank's files i % world == rank, counters summed below

    samples = distributed.shard_list(samples)
    dataset = PatchDataset(samples, size, tile)
    device = next(model.parameters()).device
    loader = make_loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    evaluator = Evaluator(model, eps, attacks, quantize, num_classes=len(class_names), iterative=iterative, uap=uap,
                          metrics=metrics, trust=trust, model_name=model_name)
    evaluator.patch_size = size
    errors, notes, files = [], [], 0
    start = time.perf_counter()
    batch: Batch
    for batch in loader:
        for index, reason in batch.errors:
            errors.append({"path": samples[index].path, "error": reason})
            if on_error is not None:
                on_error(samples[index].path, reason)
        notes.extend({"path": samples[i].path, "notes": n} for i, n in batch.notes)
        files += len(batch.files)
        evaluator.update(batch.x, batch.y)
        if progress is not None:
            progress(len(batch.files) + len(batch.errors))
    files, errors, notes = distributed.reduce_evaluator(evaluator, files, errors, notes)
    if evaluator.trust is not None:
        evaluator.trust.reduce()
    result = evaluator.result(model_name, files, errors, notes)
    result.seconds = distributed.all_reduce_max(time.perf_counter() - start)
    result.class_names = list(class_names)
    from recapfast.runtime import settings

    result.settings = settings()
    return result

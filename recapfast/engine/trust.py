"""Evaluation a reviewer can trust: APGD and Square in the eval sweep, the per-patch worst case over
attacks (``--attack auto``), detection metrics, gradient-masking checks and JPEG survival.

:class:`TrustAccumulator` is the Evaluator's extra accumulator.  Per batch it runs the attacks of
this module (apgd, square) and merges them into the batch's sweep result, then updates on-device
counters and per-patch scores; nothing is read back until :meth:`TrustAccumulator.finish`.

- ``auto`` = fgsm + apgd + square (AutoAttack's idea for two classes: the targeted APGD-DLR and FAB-T
  need more classes), run as a cascade (``recapfast.engine.cascade``; ``TrustConfig.cascade``, set by
  ``--attack auto``): its APGD and Square rows are cumulative.  The worst case counts a patch as robust
  at an eps only when it is correct clean AND survives every attack of the run at that eps (AutoAttack's
  robust accuracy), so it is never above the clean row or any attack's row.
- Each eval also reports ``masking["degenerate"]`` (one predicted class, or a clean AUC near 0.5) and
  ``masking["multiplicity"]`` (how many sign tests the checks ran and the family-wise threshold).
- Detection metrics (``recapfast.engine.detection``) clean and per (attack, eps); the adversarial logits come
  from one extra batched forward of the adversarial images for the attacks whose sweep does not
  return logits.
- Masking checks (``recapfast.engine.masking``): paired counts of patches correct under one cell and wrong
  under another, for the pairs the checks compare (each cell against clean, the attacks at one eps, each eps
  against the next ``EPS_WINDOW`` larger of one attack: linear in the eps); the clean-patch input gradient is
  checked for zeros and
  non-finite values (one extra forward and backward per batch).
- JPEG survival (``recapfast.engine.jpeg``): every adversarial image (and the clean patch) after a JPEG
  round trip at each quality, forwarded again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from recapfast.attacks.apgd import APGDConfig, apgd_attack, apgd_rows
from recapfast.attacks.single_step import SweepResult, _forward_chunks, eval_mode
from recapfast.metrics import one_hot
from recapfast.engine.detection import ScoreStore, recaptured_log_odds, summary
from recapfast.engine.cascade import CASCADE, STAGES, cascade_extra
from recapfast.engine.masking import (BLACK_BOX, EPS_WINDOW, TARGETED, MaskingThresholds, degenerate_check,
                                      masking_checks)
from recapfast.attacks.square import SquareConfig, square_attack, square_rows

EXTRA_ATTACKS = ("apgd", "square")
AUTO_ATTACKS = ("fgsm", "apgd", "square")


def expand_attacks(names: Sequence[str]) -> list[str]:
    """Attack names with ``auto`` replaced by fgsm, apgd, square (order kept, duplicates dropped)."""
    out = []
    for name in names:
        out.extend(AUTO_ATTACKS if name == "auto" else (name,))
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class TrustConfig:
    """What the accumulator runs besides the Evaluator's own counters."""

    apgd: APGDConfig = field(default_factory=APGDConfig)
    square: SquareConfig = field(default_factory=SquareConfig)
    detection: bool = True
    gradients: bool = True
    jpeg: tuple = ()
    thresholds: MaskingThresholds = field(default_factory=MaskingThresholds)
    cascade: bool = False          # --attack auto: fgsm -> apgd -> square (recapfast.engine.cascade)


def run_extra_attack(model, x, y, eps: float, attack: str, quantize: bool = True,
                     config: TrustConfig | None = None) -> torch.Tensor:
    """apgd or square at one eps: float32 [B, 3, H, W]."""
    config = config or TrustConfig()
    if attack == "apgd":
        return apgd_attack(model, x, y, eps, config.apgd, quantize)
    if attack == "square":
        return square_attack(model, x, y, eps, config.square, quantize)
    raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(EXTRA_ATTACKS)}")


def sweep_extra(model, x, y, eps: Sequence[float], attacks: Sequence[str], quantize: bool = True,
                config: TrustConfig | None = None, max_forward_batch: int = 1024,
                metrics: str = "full") -> tuple[SweepResult, dict]:
    """(SweepResult without clean logits, {attack: logits [E, B, C]}) of apgd/square, all eps in one run;
    ``metrics``: the perturbation metrics computed (recapfast.metrics.perturbation_stats)."""
    from recapfast.metrics import perturbation_stats

    xf = x.detach().to(torch.float32)
    n_eps, batch = len(eps), x.shape[0]
    predictions, linf, l2, mse, images, ssim, logits_out = {}, {}, {}, {}, {}, {}, {}
    config = config or TrustConfig()
    for name in attacks:
        if name not in EXTRA_ATTACKS:
            raise ValueError(f"unknown attack {name!r}; choose from {', '.join(EXTRA_ATTACKS)}")
        run = apgd_rows if name == "apgd" else square_rows
        board = run(model, x, y, eps, getattr(config, name), quantize)           # every eps in one batch of rows
        adv = board.view(board.out)
        with eval_mode(model), torch.no_grad():
            logits = _forward_chunks(model, adv, max_forward_batch).reshape(n_eps, batch, -1)
        logits_out[name] = logits
        predictions[name] = logits.argmax(dim=-1)
        if quantize:
            adv = adv.to(torch.uint8)                 # on the grid already: exact
        stats = perturbation_stats(x, adv, metrics)
        linf[name], l2[name], mse[name], ssim[name] = stats["linf"], stats["l2"], stats["mse"], stats["ssim"]
        images[name] = adv
    return SweepResult(list(eps), xf.new_empty((0, 2)), predictions, linf, l2, mse, images, ssim), logits_out


def gradient_health(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: input gradient of CE(f(x), y) at the clean patch is all zero / has a non-finite entry."""
    xg = x.detach().to(torch.float32).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    g = g.flatten(1)
    nonfinite = ~torch.isfinite(g).all(1)
    zero = (g == 0).all(1) & ~nonfinite
    return zero, nonfinite


class TrustAccumulator:
    """Counters and scores of one evaluation; see the module docstring."""

    def __init__(self, model, attacks: Sequence[str], eps: Sequence[float], quantize: bool, num_classes: int,
                 device, config: TrustConfig | None = None):
        self.model, self.attacks, self.eps, self.quantize = model, list(attacks), list(eps), quantize
        self.config = config or TrustConfig()
        self.num_classes = num_classes
        self.keys = [("clean", 0.0)] + [(a, e) for a in self.attacks for e in self.eps]
        k, e, c, q = len(self.keys), len(self.eps), num_classes, len(self.config.jpeg)
        z = lambda *shape: torch.zeros(shape, dtype=torch.long, device=device)  # noqa: E731
        # Paired counts of the cell pairs the masking checks compare (recapfast.engine.masking), linear in the eps:
        self.vs_clean = z(k, 2)            # [i]: (correct clean, wrong under cell i), (wrong clean, correct under i)
        self.same_eps = z(len(self.attacks), len(self.attacks), e)   # [a, b, j]: correct under (a, j), wrong (b, j)
        self.eps_order = sorted(range(e), key=lambda i: self.eps[i])
        self.eps_steps = z(len(self.attacks), e, EPS_WINDOW, 2)     # [a, i, d-1]: sorted eps i against i + d
        self.worst_correct = z(e, c)       # correct clean and under every attack at eps, per class
        self.worst_steps = z(max(e - 1, 0), 2)   # consecutive eps (ascending): [i, 0] correct only at the smaller
        self.stages = z(e, len(STAGES))    # auto cascade: which attack fooled each (patch, eps) first
        self.inherited = z(e)              # auto cascade: fooled at a smaller eps, not attacked at this one
        self.black_box_only = z(e)         # fooled by square, by no gradient attack
        self.gradient_counts = z(3)        # checked, zero, non-finite
        self.confusion = z(k, c, c)        # [cell, true, predicted]
        self.jpeg_correct = z(q, k, c)     # after the JPEG round trip, per quality, cell and class
        self.jpeg_survived = z(q, k)       # flipped by the attack and still wrong after JPEG
        self.flipped = z(k)
        self.scores = ScoreStore()
        self._gathered = None

    @property
    def extra_attacks(self) -> list[str]:
        return [a for a in self.attacks if a in EXTRA_ATTACKS]

    def update(self, x: torch.Tensor, y: torch.Tensor, res: SweepResult, metrics: str = "full") -> None:
        """Run apgd/square into ``res`` (before the Evaluator counts it), then accumulate."""
        logits = {}
        cascade = self.config.cascade and all(a in self.attacks for a in CASCADE)
        if cascade:
            more, logits, stage, inherited = cascade_extra(self.model, x, y, self.eps, res, self.config,
                                                           self.quantize, metrics)
            self.stages += one_hot(stage, len(STAGES)).sum(1)
            self.inherited += inherited.sum(1)
        elif self.extra_attacks:
            more, logits = sweep_extra(self.model, x, y, self.eps, self.extra_attacks, self.quantize, self.config,
                                       metrics=metrics)
        if cascade or self.extra_attacks:
            for part in ("predictions", "linf", "l2", "mse", "ssim", "images"):
                getattr(res, part).update(getattr(more, part))
        preds = torch.stack([res.clean_predictions] + [res.predictions[a][j] for a in self.attacks
                                                       for j in range(len(self.eps))])          # [K, B]
        ok = preds == y.unsqueeze(0)
        self._update_discordant(ok)
        onehot_y = one_hot(y, self.num_classes)
        c = self.num_classes
        self.confusion += torch.zeros((len(self.keys), c * c), dtype=torch.long, device=y.device).scatter_add_(
            1, y.unsqueeze(0) * c + preds, torch.ones_like(preds)).view(-1, c, c)
        self.flipped += (ok[:1] & ~ok).sum(1)
        adv_ok = ok[1:].reshape(len(self.attacks), len(self.eps), -1) if self.attacks else None
        if adv_ok is not None:
            worst = adv_ok.all(0) & ok[:1]          # robust = correct clean AND under every attack (AutoAttack's)
            self.worst_correct += (worst.unsqueeze(-1) * onehot_y.unsqueeze(0)).sum(1)
            if len(self.eps) > 1:
                order = sorted(range(len(self.eps)), key=lambda i: self.eps[i])
                small, large = worst[order[:-1]], worst[order[1:]]
                self.worst_steps += torch.stack([(small & ~large).sum(1), (~small & large).sum(1)], 1)
            white = [i for i, a in enumerate(self.attacks) if a not in BLACK_BOX and a not in TARGETED]
            for i, a in enumerate(self.attacks):
                if a in BLACK_BOX and white:
                    self.black_box_only += (~adv_ok[i] & adv_ok[white].all(0)).sum(1)
        if self.config.gradients:
            zero, nonfinite = gradient_health(self.model, x, y)
            self.gradient_counts += torch.stack([torch.ones_like(zero).sum(), zero.sum(), nonfinite.sum()])
        if self.config.detection:
            self.scores.add(y, recaptured_log_odds(self._all_logits(res, logits)))
        for qi, quality in enumerate(self.config.jpeg):
            self._update_jpeg(qi, quality, x, y, res, ok, onehot_y)

    def _update_discordant(self, ok: torch.Tensor) -> None:
        """The paired counts of ``ok`` [K, B] (clean, then each attack's eps): against clean, between attacks at
        one eps, and between one attack's eps and the next EPS_WINDOW larger ones."""
        self.vs_clean += torch.stack([(ok[:1] & ~ok).sum(1), (~ok[:1] & ok).sum(1)], 1)
        if not self.attacks:
            return
        adv = ok[1:].reshape(len(self.attacks), len(self.eps), -1).to(torch.float32)
        self.same_eps += torch.round(torch.einsum("aeb,ceb->ace", adv, 1.0 - adv)).to(torch.long)
        ordered = adv[:, self.eps_order]
        for d in range(1, min(EPS_WINDOW, len(self.eps) - 1) + 1):
            small, large = ordered[:, :-d], ordered[:, d:]
            self.eps_steps[:, :-d, d - 1] += torch.stack([(small * (1.0 - large)).sum(-1),
                                                           ((1.0 - small) * large).sum(-1)], -1).round().long()

    def discordant(self) -> dict:
        """{(cell A, cell B): patches correct under A and wrong under B} for the pairs counted (one read-back)."""
        clean = ("clean", 0.0)
        cells = [clean] + [(a, e) for a in self.attacks for e in self.eps]
        out = {}
        for cell, (fooled, saved) in zip(cells, self.vs_clean.cpu().tolist()):
            out[(clean, cell)], out[(cell, clean)] = fooled, saved
        same = self.same_eps.cpu().tolist()
        steps = self.eps_steps.cpu().tolist()
        for i, a in enumerate(self.attacks):
            for j, b in enumerate(self.attacks):
                out.update({((a, e), (b, e)): n for e, n in zip(self.eps, same[i][j])})
            for pos, counts in enumerate(steps[i]):
                small = (a, self.eps[self.eps_order[pos]])
                for d, (only_small, only_large) in enumerate(counts[:len(self.eps) - 1 - pos], start=1):
                    large = (a, self.eps[self.eps_order[pos + d]])
                    out[(small, large)], out[(large, small)] = only_small, only_large
        return out

    def _all_logits(self, res: SweepResult, known: dict) -> torch.Tensor:
        """Logits [K, B, C] of every cell: clean, then each attack's eps (extra forwards where not known)."""
        parts = [res.clean_logits.unsqueeze(0)]
        with eval_mode(self.model), torch.inference_mode():
            for a in self.attacks:
                if a in known:
                    parts.append(known[a])
                else:
                    imgs = res.images[a]
                    parts.append(_forward_chunks(self.model, imgs, 1024).reshape(*imgs.shape[:2], -1))
        return torch.cat(parts).to(torch.float32)

    def _update_jpeg(self, qi, quality, x, y, res, ok, onehot_y) -> None:
        from recapfast.engine.jpeg import jpeg_roundtrip, to_uint8

        stacked = torch.cat([to_uint8(x).unsqueeze(0)] + [to_uint8(res.images[a]) for a in self.attacks])
        k, b = stacked.shape[:2]
        decoded = jpeg_roundtrip(stacked.reshape(k * b, *stacked.shape[2:]), quality)
        with eval_mode(self.model), torch.inference_mode():
            pred = _forward_chunks(self.model, decoded, 1024).argmax(-1).reshape(k, b)
        jok = pred == y.unsqueeze(0)
        self.jpeg_correct[qi] += (jok.unsqueeze(-1) * onehot_y.unsqueeze(0)).sum(1)
        self.jpeg_survived[qi] += (ok[:1] & ~ok & ~jok).sum(1)

    def reduce(self) -> None:
        """Under torchrun: sum the counters over the ranks and gather the scores (call once, on every rank)."""
        from recapfast import distributed

        if not distributed.current().enabled:
            return
        distributed.all_reduce_sum_([self.vs_clean, self.same_eps, self.eps_steps, self.worst_correct, self.black_box_only, self.gradient_counts,
                                     self.confusion, self.jpeg_correct, self.jpeg_survived, self.flipped,
                                     self.worst_steps, self.stages, self.inherited])
        import numpy as np

        parts = distributed.all_gather_objects(self.scores.read())
        self._gathered = (np.concatenate([p[0] for p in parts]),
                          np.concatenate([p[1] for p in parts if p[1].size], axis=1) if any(p[1].size for p in parts)
                          else parts[0][1])

    def finish(self, result) -> None:
        """Fill ``result.detection``, ``.masking``, ``.worst_case``, ``.jpeg``, ``.attack_settings`` (one read-back)."""
        ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
        patches = result.patches
        discordant = self.discordant()
        accuracy = {("clean", 0.0): result.clean_accuracy}
        accuracy.update({(c.attack, c.eps): c.accuracy for c in result.cells})
        grads = dict(zip(("checked", "zero", "nonfinite"), self.gradient_counts.cpu().tolist()))
        bb_only = dict(zip(self.eps, self.black_box_only.cpu().tolist()))
        worst = self.worst_correct.cpu().tolist()
        order = sorted(range(len(self.eps)), key=lambda i: self.eps[i])
        worst_summary = {"eps": [self.eps[i] for i in order],
                         "accuracy": [ratio(sum(worst[i]), patches) for i in order],
                         "steps": self.worst_steps.cpu().tolist()} if len(self.attacks) >= 2 else None
        result.masking = masking_checks(self.attacks, self.eps, patches, accuracy, discordant,
                                        grads if self.config.gradients else None,
                                        bb_only, self.config.thresholds, worst_summary)
        if len(self.attacks) >= 2:
            result.worst_case = {"attacks": list(self.attacks), "definition": "correct when clean and under every "
                                 "attack at that eps", "cells": [
                {"eps": e, "correct": sum(worst[j]), "accuracy": ratio(sum(worst[j]), patches),
                 "accuracy_per_class": [ratio(c, n) for c, n in zip(worst[j], result.patches_per_class)]}
                for j, e in enumerate(self.eps)]}
            if self.config.cascade and all(a in self.attacks for a in CASCADE):
                stages, inherited = self.stages.cpu().tolist(), self.inherited.cpu().tolist()
                result.worst_case["cascade"] = {"order": list(CASCADE), "first_fooled_by": [
                    {"eps": e, **dict(zip(STAGES, stages[j])), "inherited_from_smaller_eps": inherited[j]}
                    for j, e in enumerate(self.eps)]}
        if self.config.detection and patches:      # no patch (every file skipped): no scores to rank
            labels, scores = self._gathered if self._gathered is not None else self.scores.read()
            confusion = self.confusion.cpu().tolist()
            cells = [dict(attack=a, eps=e, **summary(scores[i], labels, confusion[i]))
                     for i, (a, e) in enumerate(self.keys)]
            result.detection = {"score": "log-odds of p(recaptured)", "positive_class": result.class_names[1]
                                if len(result.class_names) > 1 else 1, "clean": cells[0], "cells": cells[1:]}
        if patches:
            clean_auc = result.detection["clean"]["auc"] if result.detection else None
            result.masking["degenerate"] = degenerate_check(self.confusion[0].cpu().tolist(), clean_auc)
        if self.config.jpeg:
            correct, survived = self.jpeg_correct.cpu().tolist(), self.jpeg_survived.cpu().tolist()
            flipped = self.flipped.cpu().tolist()
            result.jpeg = [{"quality": q, "cells": [
                {"attack": a, "eps": e, "correct": sum(correct[qi][i]), "accuracy": ratio(sum(correct[qi][i]), patches),
                 "accuracy_per_class": [ratio(c, n) for c, n in zip(correct[qi][i], result.patches_per_class)],
                 **({} if a == "clean" else {"flipped": flipped[i], "still_flipped": survived[qi][i],
                                             "survival": ratio(survived[qi][i], flipped[i])})}
                for i, (a, e) in enumerate(self.keys)]} for qi, q in enumerate(self.config.jpeg)]
        if self.extra_attacks:
            result.attack_settings = {a: asdict(getattr(self.config, a)) for a in self.extra_attacks}


def run_any_attack(model, x, y, eps: float, attack: str, quantize: bool = True, iterative=None,
                   config: TrustConfig | None = None) -> torch.Tensor:
    """Any per-image attack by name (fgsm, llcm, bim, illc, pgd, mifgsm, apgd, square) at one eps."""
    if attack in EXTRA_ATTACKS:
        return run_extra_attack(model, x, y, eps, attack, quantize, config)
    from recapfast.attacks.iterative import run_attack

    return run_attack(model, x, y, eps, attack, quantize, iterative)


def attack_batch(model, x, y, eps: float, attack: str, iterative=None, config: TrustConfig | None = None):
    """(uint8 adversarial images [B, 3, H, W], their predictions, the clean predictions) of any attack but the
    shared-gradient ones, for ``recapfast attack``."""
    adv = run_any_attack(model, x, y, eps, attack, True, iterative, config)
    with eval_mode(model), torch.inference_mode():
        preds = _forward_chunks(model, adv, 1024).argmax(1)
        clean = _forward_chunks(model, x.to(torch.float32), 1024).argmax(1)
    return adv.to(torch.uint8), preds, clean


__all__ = ["EXTRA_ATTACKS", "AUTO_ATTACKS", "expand_attacks", "TrustConfig", "run_extra_attack", "run_any_attack",
           "attack_batch", "sweep_extra", "gradient_health", "TrustAccumulator"]

"""Detection metrics of a binary forensic detector: ROC AUC, EER, TPR at a fixed FPR, confusion matrix.

The positive class is 1 (recaptured).  The score of a patch is the log-odds of p(recaptured),
``z_1 - logsumexp_{j != 1} z_j`` (= logit(p)): it orders patches exactly as p does, without the ties
that float32 saturation of p at 0 or 1 would add.

- ROC: one point per distinct score (threshold t: predict recaptured when score >= t), from
  (FPR, TPR) = (0, 0) to (1, 1); tied scores move both rates at once, as in scikit-learn's ``roc_curve``.
- AUC: trapezoidal area under that curve (= scikit-learn's ``roc_auc_score``; ties count one half).
- EER: the rate where FPR = FNR (= 1 - TPR), linearly interpolated on the ROC segment where
  FPR - FNR changes sign; ``eer_threshold`` is the p(recaptured) at that point (interpolated likewise).
- TPR at 1% FPR: the highest TPR among ROC points with FPR <= 0.01 (no interpolation).
- Confusion matrix: ``[[TN, FP], [FN, TP]]`` counts of the detector's own decision (argmax of the
  logits: the decision the accuracy counts), rows = true class.

Scores are collected on the device batch by batch (:class:`ScoreStore`, no host sync) and read back once.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def recaptured_log_odds(logits: torch.Tensor, positive: int = 1) -> torch.Tensor:
    """log p/(1 - p) of class ``positive`` per row, from logits [..., C] (C >= 2), float32."""
    logits = logits.to(torch.float32)
    others = torch.cat([logits[..., :positive], logits[..., positive + 1:]], dim=-1)
    return logits[..., positive] - torch.logsumexp(others, dim=-1)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, highest first, starting at (0, 0) with +inf."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    s, pos = scores[order], labels[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, dtype=int)
    tps = np.cumsum(pos)[last_of_run]
    fps = (last_of_run + 1) - tps
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(tps.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(fps.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last_of_run]]


def roc_auc(scores, labels) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    if fpr.size < 2 or np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def equal_error_rate(scores, labels) -> tuple[float, float]:
    """(EER, score threshold at the EER), linearly interpolated on the ROC segment that crosses FPR = FNR."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    if fpr.size < 2 or np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan"), float("nan")
    diff = fpr - (1.0 - tpr)                      # rises from -1 at (0, 0) to +1 at (1, 1)
    j = int(np.argmax(diff >= 0))                 # first ROC point at or past the crossing (j >= 1)
    if diff[j] == 0:
        return float(fpr[j]), float(thresholds[j])
    w = -diff[j - 1] / (diff[j] - diff[j - 1])
    eer = float(fpr[j - 1] + w * (fpr[j] - fpr[j - 1]))
    lo_t, hi_t = thresholds[j], thresholds[j - 1]
    threshold = float(lo_t if math.isinf(hi_t) else hi_t + w * (lo_t - hi_t))
    return eer, threshold


def tpr_at_fpr(scores, labels, max_fpr: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(tpr[fpr <= max_fpr].max())


def _sigmoid(v: float) -> float:
    if math.isnan(v):
        return float("nan")
    if math.isinf(v):
        return 1.0 if v > 0 else 0.0
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def summary(scores, labels, confusion=None, max_fpr: float = 0.01) -> dict:
    """The metrics of one (attack, eps) cell as a JSON-ready dict."""
    eer, t = equal_error_rate(scores, labels)
    out = {"auc": roc_auc(scores, labels), "eer": eer, "eer_threshold_p": _sigmoid(t),
           f"tpr_at_{max_fpr:g}_fpr": tpr_at_fpr(scores, labels, max_fpr)}
    if confusion is not None:
        out["confusion"] = [list(map(int, row)) for row in confusion]
    return out


class ScoreStore:
    """Per-patch scores of several cells, kept on the device until :meth:`read` (one copy to the host)."""

    def __init__(self):
        self._labels: list[torch.Tensor] = []
        self._scores: list[torch.Tensor] = []

    def add(self, labels: torch.Tensor, scores: torch.Tensor) -> None:
        """labels [B]; scores [cells, B] (float32)."""
        self._labels.append(labels.detach().to(torch.int8))
        self._scores.append(scores.detach().to(torch.float32))

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._labels:
            return np.zeros(0, dtype=np.int8), np.zeros((0, 0), dtype=np.float32)
        labels = torch.cat(self._labels)
        scores = torch.cat(self._scores, dim=1)
        both = torch.cat([labels.to(torch.float32).unsqueeze(0), scores]).cpu().numpy()
        return both[0].astype(np.int8), both[1:]


__all__ = ["recaptured_log_odds", "roc_curve", "roc_auc", "equal_error_rate", "tpr_at_fpr", "summary", "ScoreStore"]

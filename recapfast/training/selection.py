"""Which validation checkpoint training keeps: the criterion, the validation pass and its score.

- Baseline (``defense="none"``): the highest clean accuracy.
- Robust defences (paper, fast-at, trades), ``val_attack="apgd"`` (the default): the highest mean of the weakest
  class's clean accuracy and the weakest class's worst-case accuracy at ``val_eps`` over FGSM and APGD-CE
  (``val_attack_steps`` iterations, 1 restart, seed 0, on the uint8 grid: ``recapfast.attacks.apgd`` through the
  Evaluator, the code of ``eval --attack fgsm,apgd``).  A patch counts as robust when it is correct clean and under
  both attacks.  A strong multi-step attack is what catches catastrophic overfitting and gradient masking, where FGSM
  accuracy rises while the model is no more robust (Wong, Rice & Kolter 2020 stop early on PGD accuracy); the mean
  with clean accuracy weighs what robustness costs.  The weakest class, not the average over patches: a model
  drifting towards one answer keeps that class's patches right, clean and under every attack, so its average rises
  towards 50% + 50% while it stops detecting (docs/robustness/frontier.json's fast-at-softplus as committed in
  0d15d35, kept by the earlier average rule: 56.5% clean, 22.5% of originals); per class, the abandoned class pulls
  the score down.  A model that ranks no better
  than chance (clean ROC AUC within 0.05 of 0.5, or one class for every patch: ``eval``'s degenerate-model check)
  scores ``mean - 1``, below every checkpoint that is not degenerate.
- ``val_attack="fgsm"``: the mean of clean and FGSM accuracy at ``val_eps``, the criterion before ``--defense``
  (the bundled robust model and the paper reproduction were selected by it).

Ties keep the earlier checkpoint.
"""
from __future__ import annotations

from recapfast.attacks.apgd import APGDConfig
from recapfast.engine.evaluate import Evaluator
from recapfast.engine.trust import TrustConfig

APGD_SEED = 0


def _strong(config) -> bool:
    return config.robust and config.val_attack == "apgd"


def criterion(config) -> dict:
    """The selection rule of ``config`` in words and settings (logged, and stored in the checkpoint's JSON)."""
    eps = f"{config.val_eps:g}"
    if not config.robust:
        return {"rule": "highest clean validation accuracy"}
    if not _strong(config):
        return {"rule": f"highest mean of clean and FGSM eps {eps} validation accuracy"}
    rule = (f"highest mean of the weakest class's clean and the weakest class's worst-case (correct clean, under FGSM "
            f"and under APGD-CE) validation accuracy at eps {eps}; a degenerate model (one class, or clean AUC within "
            f"0.05 of 0.5) ranks below every other")
    attack = {"name": "apgd", "loss": "ce", "steps": config.val_attack_steps, "restarts": 1, "seed": APGD_SEED,
              "rho": 0.75, "eps": config.val_eps, "grid": "uint8"}
    return {"rule": rule, "attack": attack}


def validate(model, loader, config) -> dict:
    """Clean and FGSM accuracy at ``val_eps`` (and, for a robust defence selected by APGD, APGD's and the worst case's,
    with clean and worst case per class) on the validation loader, plus the selection ``score``."""
    eps = float(config.val_eps)
    if _strong(config):
        trust = TrustConfig(apgd=APGDConfig(steps=config.val_attack_steps, seed=APGD_SEED), detection=True,
                            gradients=False)
        evaluator = Evaluator(model, [eps], ["fgsm", "apgd"], metrics="none", trust=trust)
    else:
        evaluator = Evaluator(model, [eps], ["fgsm"], metrics="none")
    for batch in loader:
        evaluator.update(batch.x, batch.y)
    res = evaluator.result()
    metrics = {"clean_accuracy": res.clean_accuracy, f"fgsm_eps{eps:g}_accuracy": res.cells[0].accuracy,
               "patches": res.patches}
    if _strong(config):
        metrics[f"apgd_eps{eps:g}_accuracy"] = res.cells[1].accuracy
        metrics[f"worst_eps{eps:g}_accuracy"] = res.worst_case["cells"][0]["accuracy"]
        metrics["clean_accuracy_per_class"] = list(res.clean_accuracy_per_class)
        metrics[f"worst_eps{eps:g}_accuracy_per_class"] = list(res.worst_case["cells"][0]["accuracy_per_class"])
        metrics["degenerate"] = res.masking.get("degenerate", {}).get("status") == "flagged"
    metrics["score"] = score(metrics, config)
    return metrics


def score(metrics: dict, config) -> float:
    """The number :func:`criterion` maximizes."""
    eps = f"{config.val_eps:g}"
    if not config.robust:
        return metrics["clean_accuracy"]
    if not _strong(config):
        return 0.5 * (metrics["clean_accuracy"] + metrics[f"fgsm_eps{eps}_accuracy"])
    mean = 0.5 * (weakest(metrics["clean_accuracy_per_class"])
                  + weakest(metrics[f"worst_eps{eps}_accuracy_per_class"]))
    return mean - 1.0 if metrics.get("degenerate") else mean


def weakest(per_class: list) -> float:
    """The lowest accuracy over the classes the validation set has (a class with no patch is NaN and not counted)."""
    present = [a for a in per_class if a == a]
    return min(present) if present else 0.0


def selection_matches(best: dict, config) -> bool:
    """Whether a resume state's best validation ``best`` was scored by today's rule for ``config``: a robust defence
    selected by APGD before the per-class rule stored no per-class numbers, and its best score is not comparable."""
    return not (_strong(config) and best and "clean_accuracy_per_class" not in best)


def log_line(metrics: dict, config) -> str:
    """The accuracies of one validation as the training log shows them."""
    eps = f"{config.val_eps:g}"
    text = (f"val clean {100 * metrics['clean_accuracy']:.1f}%  "
            f"fgsm@{eps} {100 * metrics[f'fgsm_eps{eps}_accuracy']:.1f}%")
    if _strong(config):
        text += (f"  apgd{config.val_attack_steps}@{eps} {100 * metrics[f'apgd_eps{eps}_accuracy']:.1f}%  "
                 f"worst@{eps} {100 * metrics[f'worst_eps{eps}_accuracy']:.1f}%  weakest class: clean "
                 f"{100 * weakest(metrics['clean_accuracy_per_class']):.1f}% worst "
                 f"{100 * weakest(metrics[f'worst_eps{eps}_accuracy_per_class']):.1f}%"
                 + ("  DEGENERATE" if metrics.get("degenerate") else ""))
    return text + (f"  score {100 * metrics['score']:.1f}" if config.robust else "")


__all__ = ["APGD_SEED", "criterion", "validate", "score", "weakest", "selection_matches", "log_line"]

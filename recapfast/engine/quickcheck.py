"""A small worst-case check for the first outputs (``recapfast demo``): FGSM, then a reduced APGD-CE, then a
reduced Square, as the ``auto`` cascade, on the first patches of each class of a labelled folder.

It exists so that no one reads a masked model's FGSM row as robustness: the demo prints, beside the
FGSM/LLCM tables, the worst case this check measured and the masking checks' verdict on it.  The budgets
are smaller than ``--attack auto``'s (APGD 100 steps, Square 1000 queries) and printed with the result;
``recapfast eval --attack auto`` is the full evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from recapfast.attacks.apgd import APGDConfig
from recapfast.attacks.square import SquareConfig
from recapfast.data.folder import CLASS_NAMES, discover
from recapfast.engine.evaluate import EvalResult, evaluate_folder
from recapfast.engine.trust import AUTO_ATTACKS, TrustConfig


@dataclass(frozen=True)
class QuickCheck:
    """Budgets of the check: ``per_class`` patches of each class (the first in file order), APGD steps,
    Square queries (one restart each)."""

    per_class: int = 32
    apgd_steps: int = 20
    square_queries: int = 200


def first_per_class(samples, per_class: int) -> list:
    """The first ``per_class`` samples of each label, in the order given."""
    taken: dict = {}
    out = []
    for s in samples:
        if taken.get(s.label, 0) < per_class:
            taken[s.label] = taken.get(s.label, 0) + 1
            out.append(s)
    return out


def worst_case_check(model, root, eps: Sequence[float] = (1, 2, 3, 4, 5), check: QuickCheck = QuickCheck(),
                     size: int = 64, model_name: str = "", class_names: Sequence[str] = CLASS_NAMES,
                     progress: Callable[[int], None] | None = None) -> EvalResult:
    """``recapfast eval --attack auto`` with ``check``'s budgets on the first ``check.per_class`` patches of each
    class of ``root``; the result's ``attack_settings`` hold the budgets, ``worst_case`` and ``masking`` the verdict."""
    samples = first_per_class(discover(root, class_names), check.per_class)
    trust = TrustConfig(apgd=APGDConfig(steps=check.apgd_steps, restarts=1),
                        square=SquareConfig(queries=check.square_queries, restarts=1), cascade=True)
    return evaluate_folder(model, root, eps, AUTO_ATTACKS, size=size, model_name=model_name, class_names=class_names,
                           samples=samples, metrics="none", trust=trust, progress=progress)


__all__ = ["QuickCheck", "first_per_class", "worst_case_check"]

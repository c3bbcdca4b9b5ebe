"""One eps for every attack (issue 23): on the uint8 grid every attack stays in the integer box
[ceil(x - eps), floor(x + eps)], so a fractional eps acts as its floor, for single-step, iterative, APGD, Square
and universal perturbations alike."""
from __future__ import annotations

import math

import pytest
import torch

import recapfast as rf
from recapfast.attacks.iterative import iterative_attack
from recapfast.attacks.universal import apply_uap, data_driven_uap, random_sign_uap

FRACTIONAL = [0.5, 1.5, 1.6, 2.4]


def _attacks(model, x, y, eps):
    yield "fgsm", rf.fgsm(model, x, y, eps)
    yield "llcm", rf.llcm(model, x, y, eps)
    for name in ("bim", "illc", "pgd", "mifgsm"):
        yield name, iterative_attack(model, x, y, eps, name, steps=3)
    yield "apgd", rf.apgd(model, x, y, eps, steps=5)
    yield "square", rf.square(model, x, y, eps, queries=20)
    yield "uap random", apply_uap(x, random_sign_uap(eps, x.shape[-1]).delta)
    yield "uap data", apply_uap(x, data_driven_uap(model, x, eps, iterations=2, batch=8).delta)


@pytest.mark.parametrize("eps", FRACTIONAL)
def test_every_attack_stays_in_the_integer_box(small_model, batch, eps):
    x, y = batch
    x = x.clone()
    x[:, :, :2] = 0            # both range ends, where the clip binds
    x[:, :, -2:] = 255
    for name, adv in _attacks(small_model, x, y, eps):
        d = (adv - x.float()).abs()
        assert torch.equal(adv, adv.round()), name
        assert adv.min() >= 0 and adv.max() <= 255, name
        assert d.max() <= eps and d.max() <= math.floor(eps), (name, float(d.max()))


@pytest.mark.parametrize("eps", [1.5, 1.6, 2.4])
def test_single_step_moves_by_floor_eps(small_model, batch, eps):
    """FGSM at 1.5 used to move half the pixels by 2 (round(x + 1.5)), at 1.6 all of them: now every pixel with a
    non-zero gradient moves by exactly floor(eps), away from the range ends."""
    x, y = batch
    x = x.clamp(10, 245)
    for adv in (rf.fgsm(small_model, x, y, eps), rf.llcm(small_model, x, y, eps)):
        d = (adv - x.float()).abs()
        moved = d[d > 0]
        assert moved.numel() > 0.9 * d.numel() and torch.all(moved == math.floor(eps))
    assert torch.equal(rf.fgsm(small_model, x, y, eps), rf.fgsm(small_model, x, y, math.floor(eps)))

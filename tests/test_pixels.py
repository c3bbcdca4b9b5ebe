"""rf.fgsm & co. refuse float images evidently in [0, 1] unless told the range; input_range=1 attacks in grey levels."""
from __future__ import annotations

import pytest
import torch

import recapfast as rf
from recapfast.attacks import single_step as attacks
from recapfast.attacks import iterative
from recapfast.models.pixels import InputAdapter, InputConvention

GUARDED = ("fgsm", "llcm", "sweep", "bim", "illc", "pgd", "mifgsm", "apgd", "square")


def call(name, model, x, y, **kw):
    fn = getattr(rf, name)
    if name == "sweep":
        return fn(model, x, y, [2], **kw)
    extra = {"steps": 2} if name in ("bim", "illc", "pgd", "mifgsm", "apgd") else {}
    if name == "square":
        extra = {"queries": 3}
    return fn(model, x, y, 2, **extra, **kw)


@pytest.mark.parametrize("name", GUARDED)
def test_unit_interval_floats_are_refused(small_model, batch, name):
    x, y = batch
    with pytest.raises(ValueError, match=r"looks like \[0, 1\] images"):
        call(name, small_model, x.float() / 255, y)
    call(name, small_model, x, y)                          # uint8: never checked
    call(name, small_model, x.float(), y)                  # pixel units
    call(name, small_model, torch.zeros_like(x, dtype=torch.float32), y)      # all black: not evidently [0, 1]


def test_input_range_255_is_the_unguarded_attack(small_model, batch):
    x, y = batch
    dark = x.float() / 255                                 # genuinely dark pixel-unit images
    assert torch.equal(rf.fgsm(small_model, dark, y, 2, input_range=255), attacks.fgsm(small_model, dark, y, 2))


def test_input_range_1_attacks_the_unit_model_in_grey_levels(small_model, batch):
    x, y = batch
    class Times255(torch.nn.Module):
        def forward(self, z):
            return small_model(z * 255.0)

    unit_model = Times255()                                # a model that takes [0, 1]
    x01 = x.float() / 255
    got = rf.fgsm(unit_model, x01, y, 2, input_range=1)
    want = attacks.fgsm(InputAdapter(unit_model, InputConvention(1.0)), x01 * 255, y, 2) / 255
    assert torch.equal(got, want) and got.max() <= 1
    assert (got * 255 - x.float()).abs().max() <= 2 + 1e-4      # eps 2 grey levels, not 2 units of [0, 1]
    pgd = rf.pgd(unit_model, x01, y, 3, input_range=1, steps=2)
    assert torch.allclose(pgd * 255, iterative.pgd(small_model, (x01 * 255), y, 3, steps=2), atol=1e-3)
    with pytest.raises(ValueError, match="input_range"):
        rf.fgsm(unit_model, x01, y, 2, input_range=100)

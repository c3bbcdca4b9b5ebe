"""Square Attack: black-box (logits only), box vertices on the uint8 grid, query budget, and torchattacks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import recapfast as rf
from recapfast.attacks.square import SquareConfig, margin, square, square_attack, square_fraction


class Spy(nn.Module):
    """Counts queried images and records whether any query could build a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.grad_seen = model, 0, False

    def forward(self, x):
        self.rows += x.shape[0]
        self.grad_seen |= torch.is_grad_enabled() or x.requires_grad
        return self.model(x)


def test_logits_only_and_query_budget(small_model, batch):
    x, y = batch
    spy = Spy(small_model)
    adv = square(spy, x, y, 3, queries=25, restarts=2)
    assert not spy.grad_seen and all(p.grad is None for p in small_model.parameters())
    # clean query + at most `queries` per patch and restart
    assert x.shape[0] < spy.rows <= x.shape[0] * (1 + 2 * 25)
    assert adv.shape == x.shape


def test_vertices_of_the_integer_box(small_model, batch):
    x, y = batch
    x = x.clone()
    x[:, :, :2] = 0
    x[:, :, -2:] = 255
    with torch.no_grad():
        attacked = small_model(x.float()).argmax(1) == y
    for eps in (1, 2.5, 4):
        adv = square(small_model, x, y, eps, queries=15)
        lo = torch.ceil((x.float() - eps).clamp_min(0))
        hi = torch.floor((x.float() + eps).clamp_max(255))
        on_vertex = (adv == lo) | (adv == hi)
        assert bool(on_vertex[attacked].all())
        assert torch.equal(adv[~attacked], x[~attacked].float())      # misclassified clean: unchanged


def test_seeded_and_fooled_images_are_misclassified(synth_dir):
    from recapfast.attacks.universal import load_patches

    model = rf.load_model("baseline")
    x = load_patches(synth_dir, 32)[::2]
    y = torch.tensor([0] * 12 + [1] * 12)
    a = square(model, x, y, 4, queries=40, seed=1)
    assert torch.equal(a, square(model, x, y, 4, queries=40, seed=1))
    assert not torch.equal(a, square(model, x, y, 4, queries=40, seed=2))
    with torch.no_grad():
        clean_ok, m = model(x.float()).argmax(1) == y, margin(model(a), y)
    fooled = clean_ok & (m <= 0)
    assert fooled.any() and bool((m[clean_ok & ~fooled] > 0).all())


def test_p_schedule_and_margin():
    q = 1000       # the reference's halvings at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000
    assert square_fraction(0, q) == 0.8 and square_fraction(1, q) == 0.8
    assert square_fraction(2, q) == 0.4 and square_fraction(5, q) == 0.4 and square_fraction(6, q) == 0.2
    assert square_fraction(999, q) == pytest.approx(0.8 / 512)
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, -1.0]])
    assert torch.equal(margin(logits, torch.tensor([0, 0])), torch.tensor([1.0, -3.0]))
    with pytest.raises(ValueError, match="queries"):
        square_attack(None, torch.zeros(1, 3, 8, 8), torch.zeros(1), 1, SquareConfig(queries=0))


def test_success_comparable_to_torchattacks_square(synth_dir):
    """Not pixel-comparable (torchattacks moves one window for the whole batch, from the global RNG; recapfast one
    per patch from its own generator): the accuracy it leaves, over three seeds, is compared instead."""
    torchattacks = pytest.importorskip("torchattacks")
    from recapfast.attacks.universal import load_patches

    class Unit01(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x * 255.0)

    model = rf.load_model("baseline")
    x = load_patches(synth_dir, 32)
    y = torch.tensor([0] * 24 + [1] * 24)
    ours, theirs = [], []
    with torch.no_grad():
        for seed in range(3):
            ours.append(float((model(square(model, x, y, 2, queries=50, seed=seed, quantize=False)).argmax(1) == y)
                              .float().mean()))
            oracle = torchattacks.Square(Unit01(model).eval(), norm="Linf", eps=2 / 255, n_queries=50, seed=seed)
            adv = oracle(x.float() / 255, y) * 255
            theirs.append(float((model(adv).argmax(1) == y).float().mean()))
    assert abs(sum(ours) / 3 - sum(theirs) / 3) <= 0.1, (ours, theirs)


class FarFromTheBoundary(nn.Module):
    """Logits [1000, w . x]: never fooled (margin > 0), but every pixel moves the margin; records every query."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3 * 4 * 4, generator=torch.Generator().manual_seed(0)))
        self.queries = []

    def forward(self, x):
        self.queries.extend(x.detach().clone())
        z = x.flatten(1) @ self.w / 255.0
        return torch.stack([torch.full_like(z, 1000.0), z], 1)


def test_no_query_is_spent_on_an_unchanged_image():
    """Issue 23: a window whose drawn signs leave the image as it is gets new signs (the reference redraws); so
    every query differs from the image it would replace.  On 4 x 4 patches the late 1 x 1 windows were unchanged
    for about a third of the queries before."""
    model = FarFromTheBoundary()
    x = torch.randint(20, 235, (1, 3, 4, 4), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    y = torch.zeros(1, dtype=torch.long)
    square(model, x, y, 3, queries=300, seed=2)
    clean, current, *rest = model.queries
    assert torch.equal(clean, x[0].float()) and len(rest) == 299
    score = lambda img: float(model.w.detach() @ img.flatten() / 255.0)  # noqa: E731  (margin = 1000 - score)
    for q in rest:
        assert not torch.equal(q, current)
        if score(q) > score(current):            # accepted: a lower margin
            current = q

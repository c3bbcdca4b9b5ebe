"""LaplacianCNN's --activation: relu, softplus, gelu stored in the checkpoint; the folded fast path (hand adjoint)
equals autograd on the unfolded model for each, and the attacks that use it (FGSM sweep, APGD, Square) give the
autograd path's results."""
from __future__ import annotations

import json

import pytest
import torch

import recapfast as rf
from recapfast import ops
from recapfast.attacks.apgd import APGDConfig, apgd_rows
from recapfast.attacks.single_step import ATTACK_SIGN, autograd_input_gradients, input_gradients, sweep
from recapfast.attacks.square import SquareConfig, square_rows
from recapfast.io.checkpoint_check import CheckpointError
from recapfast.models import fastpath
from recapfast.models.laplacian import ACTIVATIONS

from conftest import Autograd

SMOOTH = ["softplus", "gelu"]


def smooth_model(activation: str) -> rf.LaplacianCNN:
    """The bundled baseline's weights under another activation (a non-trivial function: it classifies and attacks
    flip some patches and not others)."""
    base = rf.load_model("baseline")
    model = rf.LaplacianCNN(base.widths, activation=activation)
    model.load_state_dict(base.state_dict())
    return model.eval()


def _patches(synth_dir, size=64):
    from recapfast.attacks.universal import load_patches

    return load_patches(synth_dir, size)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_activation_is_in_the_model_and_its_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 24, 24), generator=gen).float()
    outs = {}
    for name in ACTIVATIONS:
        model = smooth_model(name)
        path = rf.save_checkpoint(model, tmp_path / f"{name}.safetensors")
        assert json.loads(path.with_suffix(".json").read_text())["model"]["activation"] == name
        loaded = rf.load_model(path)
        assert loaded.activation == name and all(u.act is ACTIVATIONS[name] for u in loaded.units)
        with torch.no_grad():
            outs[name] = loaded(x)
            assert torch.equal(outs[name], model(x))
    assert not torch.allclose(outs["relu"], outs["softplus"]) and not torch.allclose(outs["relu"], outs["gelu"])
    assert rf.load_model("baseline").activation == "relu"           # configs before --activation: ReLU
    tampered = smooth_model("gelu")
    tampered.activation = "swish"                 # what config() writes; the loader must refuse it
    bad = rf.save_checkpoint(tampered, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="activation 'swish'"):
        rf.load_model(bad)
    with pytest.raises(ValueError, match="activation"):
        rf.LaplacianCNN(activation="tanh")


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("kind", ["random", "synth"])
def test_smooth_fast_path_equals_autograd(op_backend, activation, kind, synth_dir):
    if kind == "random":
        gen = torch.Generator().manual_seed(7)
        x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=gen)
    else:
        x = _patches(synth_dir)[:24]
    model = smooth_model(activation)
    y = (torch.arange(x.shape[0]) % 2)
    assert fastpath.supports(model)
    with torch.inference_mode():
        ref_logits = model(x.float())
    assert _rel(fastpath.FoldedLaplacianCNN(model).logits(x), ref_logits) < 1e-4
    fast_logits, fast = input_gradients(model, x, y, ("fgsm", "llcm"))        # two cotangents in one backward
    ref_logits2, ref = autograd_input_gradients(model, x, y, ("fgsm", "llcm"))
    assert _rel(fast_logits, ref_logits2) < 1e-4
    for name in ("fgsm", "llcm"):
        assert ref[name].abs().max() > 0
        assert _rel(fast[name], ref[name]) < 1e-4, name
        adv = ops.perturb(x, fast[name], [1.0, 3.0], [ATTACK_SIGN[name]] * 2)
        adv_ref = ops.perturb(x, ref[name], [1.0, 3.0], [ATTACK_SIGN[name]] * 2)
        assert (adv == adv_ref).float().mean() >= 0.9999, name


def test_attacks_on_a_softplus_model_equal_the_autograd_path(synth_dir):
    model = smooth_model("softplus")
    x = _patches(synth_dir, 32)
    with torch.no_grad():
        y = model(x.float()).argmax(1)              # its own decisions: every patch is attacked
    # FGSM sweep (fast path) against the per-attack autograd reference
    res = sweep(model, x, y, eps=[1, 2])
    _, ref = autograd_input_gradients(model, x, y, ("fgsm",))
    adv_ref = ops.perturb(x, ref["fgsm"], [1, 2], [1.0, 1.0])
    with torch.no_grad():
        pred_ref = model(adv_ref.flatten(0, 1).float()).argmax(1).view(2, -1)
    assert torch.equal(res.predictions["fgsm"], pred_ref)
    # APGD rows (LossGrad: folded forward + hand adjoint) against the same model through autograd
    fast = apgd_rows(model, x, y, [1.0, 2.0], APGDConfig(steps=10))
    slow = apgd_rows(Autograd(model), x, y, [1.0, 2.0], APGDConfig(steps=10))
    assert 0 < int(fast.fooled.sum()) < fast.rows, "the test needs patches that flip and patches that do not"
    assert torch.equal(fast.fooled, slow.fooled)
    assert (fast.out == slow.out).float().mean() >= 0.999
    # Square (logits only, through the folded forward)
    fast = square_rows(model, x, y, [1.0], SquareConfig(queries=30, seed=1))
    slow = square_rows(Autograd(model), x, y, [1.0], SquareConfig(queries=30, seed=1))
    assert torch.equal(fast.fooled, slow.fooled) and (fast.out == slow.out).float().mean() >= 0.999

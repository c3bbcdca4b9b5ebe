"""The eval-sweep contenders: recapfast (ext / torch backend), the skilled 20-line script, the peer libraries.

Every contender maps one batch (uint8 [B,3,H,W], labels [B]) to per-image correctness:
clean [B], FGSM [E,B] and LLCM [E,B] (None where the library has no LLCM), for eps in grey
levels.  All adversarial images are evaluated on the uint8 grid: the peers work on [0, 1]
inputs, so their model is wrapped as ``model(x * 255)``, eps is passed as eps/255, and their
outputs are rounded back to integers before the prediction forward.

Settings: each contender's batch function runs inside ``common.contender_settings``: its own op
backend (recapfast-ext: ext; recapfast-torch and the 20-liner: torch, i.e. plain PyTorch ops;
the peer libraries: auto, the model as shipped) and the run's thread count, restored afterwards.

Peers are optional.  A peer that cannot be imported is reported as missing, with the command
that installs it (``PEER_INSTALL``); it is never dropped silently.
"""
from __future__ import annotations

import contextlib
import importlib
import io
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

PEER_INSTALL = ("pip install --no-deps torchattacks==3.5.1 foolbox==3.3.4 eagerpy==0.30.0 "
                "adversarial-robustness-toolbox==1.20.1 && pip install GitPython six tqdm scipy scikit-learn")

BatchFn = Callable[[torch.Tensor, torch.Tensor], tuple]


@dataclass
class Contender:
    name: str
    label: str
    module: str | None                  # the peer's import name (None: recapfast itself or plain PyTorch)
    has_llcm: str                       # "paper" | "excludes true label" | "emulated (targeted criterion)" | "n/a"
    backend: str = "auto"               # recapfast op backend this contender runs with
    version: str | None = None
    missing: str | None = None          # why it is unavailable
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.missing is None


class Pixel01(nn.Module):
    """The detector on [0, 1] inputs, as the peer libraries expect: model(x * 255)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * 255.0)


def _probe(module: str) -> tuple[str | None, str | None]:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure means "missing", with the reason
        return None, f"{type(err).__name__}: {err}"
    return getattr(mod, "__version__", "unknown"), None


def contenders(names: Sequence[str] | None = None) -> list[Contender]:
    """All contenders, peers probed for importability (missing ones carry the reason)."""
    out = [
        Contender("recapfast-ext", "recapfast (ext backend)", None, "paper", backend="ext"),
        Contender("recapfast-torch", "recapfast (torch backend)", None, "paper", backend="torch"),
        Contender("skilled", "skilled 20-line PyTorch script", None, "paper", backend="torch",
                  notes=["the primary bar (bench/skilled.py): one clean forward, one input gradient per attack, "
                         "all eps by broadcasting, channels_last inference_mode forwards in 2^19-pixel chunks; "
                         "plain PyTorch ops (recapfast backend torch)"]),
        Contender("torchattacks", "torchattacks loop (FGSM per eps)", "torchattacks", "excludes true label",
                  notes=["LLCM via set_mode_targeted_least_likely(): the least likely class among the classes "
                         "other than the TRUE label (with 2 classes: always 1 - y). recapfast's LLCM is "
                         "argmin over ALL classes (paper eq. 3): 1 - prediction. They differ exactly on "
                         "images misclassified when clean, by design.",
                         "least-likely mode runs an extra clean forward per call to pick the target"]),
        Contender("foolbox", "foolbox LinfFastGradientAttack(epsilons=[...])", "foolbox",
                  "emulated (targeted criterion)",
                  notes=["foolbox has no LLCM (its FGSM refuses targeted criteria); emulated with "
                         "LinfBasicIterativeAttack(steps=1, rel_stepsize=1, no random start) = one targeted signed "
                         "step of size eps, with TargetedMisclassification(argmin of the clean logits over all "
                         "classes), which equals the paper's definition",
                         "foolbox recomputes the gradient for every epsilon and runs its own is-adversarial "
                         "forward per epsilon (on unquantized images) before ours on the uint8 grid"]),
        Contender("art", "ART FastGradientMethod per eps", "art", "paper",
                  notes=["LLCM via targeted=True with y = one-hot argmin of the clean logits over all classes",
                         "numpy in and out (PyTorchClassifier, clip_values (0, 1))"]),
    ]
    if names is not None:
        out = [c for c in out if c.name in names]   # before probing: importing a peer library takes seconds
    for c in out:
        if c.module is not None:
            c.version, c.missing = _probe(c.module)
        elif c.name == "skilled":
            c.version = torch.__version__
        else:
            import recapfast
            c.version = getattr(recapfast, "__version__", "0.1.0")
    return out


def _quantized_predictions(model: nn.Module, adv01: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.round(adv01.detach() * 255.0).clamp_(0, 255)).argmax(1)


def make_batch_fn(contender: Contender, model: nn.Module, eps: Sequence[float],
                  attacks: Sequence[str] = ("fgsm", "llcm"), threads: int = 1) -> BatchFn:
    """A function batch -> (clean_ok [B], {attack: ok [E,B] or None}) for this contender.

    The function runs with the contender's op backend and ``threads`` torch threads, and restores both.
    """
    from .common import contender_settings

    eps = [float(e) for e in eps]
    model.eval()
    if contender.name.startswith("recapfast"):
        fn = _recapfast_fn(model, eps, attacks)
    elif contender.name == "skilled":
        fn = _skilled_fn(model, eps, attacks)
    elif contender.name == "torchattacks":
        fn = _torchattacks_fn(model, eps, attacks)
    elif contender.name == "foolbox":
        fn = _foolbox_fn(model, eps, attacks)
    elif contender.name == "art":
        fn = _art_fn(model, eps, attacks)
    else:
        raise ValueError(f"unknown contender {contender.name!r}")

    def run(x, y):
        with contender_settings(contender.backend, threads):
            return fn(x, y)

    return run


def _recapfast_fn(model, eps, attacks) -> BatchFn:
    from recapfast.attacks.single_step import sweep

    def run(x, y):
        res = sweep(model, x, y, eps, attacks, quantize=True)
        clean_ok = res.clean_predictions == y
        return clean_ok, {a: res.predictions[a] == y.unsqueeze(0) for a in attacks}

    return run


def _skilled_fn(model, eps, attacks) -> BatchFn:
    from . import skilled

    if tuple(attacks) != ("fgsm", "llcm"):
        raise ValueError("the 20-line script computes exactly FGSM and LLCM")
    script = skilled.make(model, eps)

    def run(x, y):
        clean, fgsm, llcm = script(x, y)
        return clean == y, {"fgsm": fgsm == y.unsqueeze(0), "llcm": llcm == y.unsqueeze(0)}

    return run


def _torchattacks_fn(model, eps, attacks) -> BatchFn:
    import torchattacks

    wrapped = Pixel01(model).eval()

    def run(x, y):
        x01 = x.to(torch.float32) / 255.0
        with torch.inference_mode():
            clean_ok = model(x.to(torch.float32)).argmax(1) == y
        out = {}
        for name in attacks:
            rows = []
            for e in eps:
                atk = torchattacks.FGSM(wrapped, eps=e / 255.0)
                if name == "llcm":
                    with contextlib.redirect_stdout(io.StringIO()):  # it prints the mode change
                        atk.set_mode_targeted_least_likely()
                rows.append(_quantized_predictions(model, atk(x01, y)) == y)
            out[name] = torch.stack(rows)
        return clean_ok, out

    return run


def _foolbox_fn(model, eps, attacks) -> BatchFn:
    import foolbox as fb

    wrapped = Pixel01(model).eval()
    fmodel = fb.PyTorchModel(wrapped, bounds=(0, 1), device=next(model.parameters()).device)
    attack = fb.attacks.LinfFastGradientAttack(random_start=False)
    targeted = fb.attacks.LinfBasicIterativeAttack(rel_stepsize=1.0, steps=1, random_start=False)
    eps01 = [e / 255.0 for e in eps]

    def run(x, y):
        x01 = x.to(torch.float32) / 255.0
        with torch.inference_mode():
            logits = model(x.to(torch.float32))
        clean_ok = logits.argmax(1) == y
        out = {}
        for name in attacks:
            if name == "fgsm":
                _, clipped, _ = attack(fmodel, x01, y, epsilons=eps01)
            else:
                criterion = fb.criteria.TargetedMisclassification(logits.argmin(1))
                _, clipped, _ = targeted(fmodel, x01, criterion, epsilons=eps01)
            out[name] = torch.stack([_quantized_predictions(model, c) == y for c in clipped])
        return clean_ok, out

    return run


def _art_fn(model, eps, attacks) -> BatchFn:
    import logging

    import numpy as np
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    logging.getLogger("art").setLevel(logging.WARNING)
    wrapped = Pixel01(model).eval()
    cache: dict = {}

    def classifier(shape):
        if shape not in cache:
            cache[shape] = PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(), input_shape=shape,
                                             nb_classes=2, clip_values=(0.0, 1.0), device_type="cpu")
        return cache[shape]

    def run(x, y):
        clf = classifier(tuple(x.shape[1:]))
        xn = (x.to(torch.float32) / 255.0).numpy()
        yn = y.numpy()
        logits = clf.predict(xn, batch_size=x.shape[0])
        clean_ok = torch.from_numpy(logits.argmax(1) == yn)
        out = {}
        for name in attacks:
            target = yn if name == "fgsm" else logits.argmin(1)
            onehot = np.eye(2, dtype=np.float32)[target]
            rows = []
            for e in eps:
                fgm = FastGradientMethod(clf, norm=np.inf, eps=e / 255.0, eps_step=e / 255.0,
                                         targeted=name == "llcm", batch_size=x.shape[0])
                adv = fgm.generate(xn, y=onehot)
                q = np.clip(np.round(adv * 255.0), 0, 255) / 255.0
                rows.append(torch.from_numpy(clf.predict(q.astype(np.float32), batch_size=x.shape[0]).argmax(1) == yn))
            out[name] = torch.stack(rows)
        return clean_ok, out

    return run

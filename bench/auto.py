"""auto workload: the strong-attack evaluation (FGSM + APGD-CE + Square at eps 1..5), every contender.

Per bundled model (baseline, robust) and image size, on the same patches (a synthetic folder, decoded
into memory for the peers):

- ``recapfast auto``: what ``recapfast eval --attack auto --eps 1,2,3,4,5`` runs, end to end from the PNG
  folder (``evaluate_folder``: decode, the FGSM sweep, the APGD/Square cascade, every default metric,
  detection metrics and masking checks), APGD 100 steps, Square 1000 queries, 1 restart each;
- ``torchattacks loop``: the user's alternative, on the decoded patches: for each eps, torchattacks'
  FGSM, APGD(norm="Linf", loss="ce", steps=100, n_restarts=1) and Square(n_queries=1000, n_restarts=1)
  on every patch, worst case = correct clean and under all three;
- ``ART AutoAttack``: ART's AutoAttack with the same three attacks and budgets, per eps, where ART installs;
- adv-lib's APGD: recorded as missing where it cannot be imported (its package imports torchvision);
- ``APGD alone``: recapfast's APGD (``apgd_rows``) and torchattacks' APGD, one eps per call, eps 1..5.

Medians of >= 7 alternating repetitions, CPU time (``time.process_time``) beside wall time; the
robust counts per eps of every contender are recorded beside the times (the peers attack in float,
recapfast on the uint8 grid, so equal counts are expected for integer eps, not required).
"""
from __future__ import annotations

import importlib

import torch

from .common import alternate, contender_settings, load_folder, log, summary, synth_folder
from .peers import Pixel01

EPS = (1.0, 2.0, 3.0, 4.0, 5.0)
STEPS, QUERIES = 100, 1000


def _ta_loop(model, x, y):
    import torchattacks

    net = Pixel01(model).eval()
    xf = x.float() / 255.0
    robust = []
    with torch.no_grad():
        ok_clean = model(x.float()).argmax(1) == y
    for e in EPS:
        ok = ok_clean.clone()
        for attack in (torchattacks.FGSM(net, eps=e / 255), torchattacks.APGD(net, norm="Linf", eps=e / 255,
                       steps=STEPS, n_restarts=1, loss="ce"),
                       torchattacks.Square(net, norm="Linf", eps=e / 255, n_queries=QUERIES, n_restarts=1)):
            adv = attack(xf, y)
            with torch.no_grad():
                ok &= net(adv).argmax(1) == y
        robust.append(int(ok.sum()))
    return robust


def _art_auto(model, x, y):
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, FastGradientMethod, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    net = Pixel01(model).eval()
    clf = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=2,
                            clip_values=(0.0, 1.0), device_type="cpu")
    xs, ys = x.float().numpy() / 255.0, y.numpy()
    robust = []
    for e in EPS:
        attacks = [FastGradientMethod(clf, eps=e / 255, batch_size=len(xs)),
                   AutoProjectedGradientDescent(clf, eps=e / 255, eps_step=2 * e / 255, max_iter=STEPS,
                                                nb_random_init=1, batch_size=len(xs), loss_type="cross_entropy",
                                                verbose=False),
                   SquareAttack(clf, eps=e / 255, max_iter=QUERIES, nb_restarts=1, batch_size=len(xs), verbose=False)]
        adv = AutoAttack(clf, eps=e / 255, eps_step=2 * e / 255, attacks=attacks, batch_size=len(xs)).generate(xs, ys)
        with torch.no_grad():
            pred = model(torch.from_numpy(adv) * 255.0).argmax(1)
        robust.append(int((pred == y).sum()))
    return robust


def _recapfast_auto(model, root, size, batch, threads):
    from recapfast.attacks.apgd import APGDConfig
    from recapfast.attacks.square import SquareConfig
    from recapfast.engine.evaluate import evaluate_folder
    from recapfast.engine.trust import TrustConfig

    trust = TrustConfig(apgd=APGDConfig(STEPS, 1), square=SquareConfig(QUERIES, 1), cascade=True)

    def run():
        with contender_settings("auto", threads):
            res = evaluate_folder(model, root, EPS, ("fgsm", "apgd", "square"), size=size, batch_size=batch,
                                  on_error=None, trust=trust)
        return [c["correct"] for c in res.worst_case["cells"]]
    return run


def _apgd_alone(model, x, y, threads, ours: bool):
    def run():
        with contender_settings("auto", threads):
            if ours:
                from recapfast.attacks.apgd import APGDConfig, apgd_rows

                out = []
                for e in EPS:
                    adv = apgd_rows(model, x, y, [e], APGDConfig(STEPS, 1)).out
                    with torch.no_grad():
                        out.append(int((model(adv).argmax(1) == y).sum()))
                return out
            import torchattacks

            net = Pixel01(model).eval()
            out = []
            for e in EPS:
                adv = torchattacks.APGD(net, norm="Linf", eps=e / 255, steps=STEPS, n_restarts=1, loss="ce")(
                    x.float() / 255.0, y)
                with torch.no_grad():
                    out.append(int((net(adv).argmax(1) == y).sum()))
            return out
    return run


def _available(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure: missing, with the reason
        return f"{type(err).__name__}: {err}"
    return None


def run(models: dict, sizes, counts: dict, reps: int, threads: int = 1, art_sizes=(64,), saved=None) -> dict:
    """``models``: {name: model}; ``counts[size]``: patches per class; returns the workload's results.

    ``saved(rows)``: called with the rows so far after each finished row (a long run cut short keeps them)."""
    missing = {"torchattacks": _available("torchattacks"), "art": _available("art"),
               "adv-lib": _available("adv_lib.attacks")}
    for name, why in missing.items():
        if why:
            log(f"bench auto: {name}: MISSING ({why})")
    rows = []
    for model_name, model in models.items():
        for size in sizes:
            root = synth_folder(size, counts[size], seed=4711)
            x, y = load_folder(root, size)
            batch = len(y)
            results: dict = {}

            def keep(name, fn):
                def go():
                    results[name] = fn()
                return go
            fns = {"recapfast auto": keep("recapfast auto", _recapfast_auto(model, root, size, batch, threads))}
            if not missing["torchattacks"]:
                fns["torchattacks loop"] = keep("torchattacks loop", lambda: _in(threads, _ta_loop, model, x, y))
            if not missing["art"] and size in art_sizes:
                fns["ART AutoAttack"] = keep("ART AutoAttack", lambda: _in(threads, _art_auto, model, x, y))
            fns["recapfast APGD alone"] = keep("recapfast APGD alone", _apgd_alone(model, x, y, threads, True))
            if not missing["torchattacks"]:
                fns["torchattacks APGD alone"] = keep("torchattacks APGD alone", _apgd_alone(model, x, y, threads,
                                                                                            False))
            log(f"bench auto: {model_name}, {batch} patches of {size} px, {len(fns)} contenders x {reps} reps, "
                f"{threads} thread(s)")
            times = alternate(fns, reps)
            row = {"model": model_name, "size": size, "patches": batch, "threads": threads, "reps": reps,
                   "contenders": {n: dict(summary(t, batch), robust_per_eps=results.get(n)) for n, t in times.items()}}
            c = row["contenders"]
            if "torchattacks loop" in c:
                row["auto_over_torchattacks_loop"] = round(c["torchattacks loop"]["cpu_s"] /
                                                           c["recapfast auto"]["cpu_s"], 2)
            if "torchattacks APGD alone" in c:
                row["apgd_over_torchattacks_apgd"] = round(c["torchattacks APGD alone"]["cpu_s"] /
                                                           c["recapfast APGD alone"]["cpu_s"], 2)
            if "ART AutoAttack" in c:
                row["auto_over_art"] = round(c["ART AutoAttack"]["cpu_s"] / c["recapfast auto"]["cpu_s"], 2)
            for n, r in c.items():
                log(f"  {n:24s} cpu {r['cpu_s']:8.3f} s  wall {r['wall_s']:8.3f} s  robust {r['robust_per_eps']}")
            log(f"  ratios (CPU): auto {row.get('auto_over_torchattacks_loop')}x the torchattacks loop, "
                f"APGD {row.get('apgd_over_torchattacks_apgd')}x torchattacks' APGD, "
                f"ART {row.get('auto_over_art')}x")
            rows.append(row)
            if saved is not None:
                saved(rows)
    return {"eps": list(EPS), "apgd_steps": STEPS, "square_queries": QUERIES, "threads": threads,
            "missing": {k: v for k, v in missing.items() if v}, "rows": rows}


def _in(threads, fn, *args):
    with contender_settings(None, threads):
        return fn(*args)


__all__ = ["run", "EPS"]

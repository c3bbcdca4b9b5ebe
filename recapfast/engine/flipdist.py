"""Measured quantities behind the reproduction's findings: flip distances and FGSM/LLCM agreement.

* BIM-to-flip: for each patch, the smallest eps in 1..max_eps (grey levels) at which recapfast's BIM
  (``recapfast.attacks.iterative.bim``, default steps and step size, uint8 grid) changes the model's decision
  on a correctly classified patch; ``None`` when no eps up to max_eps does (patches misclassified when
  clean are counted apart).  BIM at eps e runs independently of BIM at other eps.
* FGSM/LLCM agreement: per eps, the share of patches whose FGSM and LLCM images are identical, and
  the accuracies of both attacks on the patches the model gets wrong when clean (where two-class
  FGSM and LLCM can differ).

Every number here is measured on the patches given; :func:`explain` turns them into sentences that
state only these measurements.
"""
from __future__ import annotations

from typing import Sequence

import torch

from recapfast.attacks.single_step import eval_mode, sweep
from recapfast.attacks.iterative import bim

MAX_FLIP_EPS = 5


def _predict(model, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.inference_mode():
        return model(x.float()).argmax(1)


def measure(model, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float] = (1, 2, 3, 4, 5),
            max_flip_eps: int = MAX_FLIP_EPS, batch_size: int = 64) -> dict:
    """Measurements on uint8 patches x [N, 3, S, S] with labels y [N] (see the module docstring)."""
    n = int(x.shape[0])
    eps = [float(e) for e in eps]
    same = torch.zeros(len(eps))
    wrong_fgsm = torch.zeros(len(eps))
    wrong_llcm = torch.zeros(len(eps))
    flip = torch.full((n,), -1, dtype=torch.long)          # -1: not flipped up to max_flip_eps
    clean_ok = torch.zeros(n, dtype=torch.bool)
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        res = sweep(model, xb, yb, eps, ("fgsm", "llcm"), quantize=True, return_images=True)
        ok = res.clean_predictions.cpu() == yb.cpu()
        clean_ok[i:i + len(xb)] = ok
        eq = (res.images["fgsm"] == res.images["llcm"]).flatten(2).all(2).cpu()     # [E, B]
        same += eq.float().sum(1)
        wrong = ~ok
        wrong_fgsm += (res.predictions["fgsm"].cpu()[:, wrong] == yb.cpu()[wrong]).float().sum(1)
        wrong_llcm += (res.predictions["llcm"].cpu()[:, wrong] == yb.cpu()[wrong]).float().sum(1)
        todo = ok.clone()
        for e in range(1, int(max_flip_eps) + 1):
            if not todo.any():
                break
            idx = todo.nonzero().flatten()
            adv = bim(model, xb[idx], yb[idx], float(e))
            flipped = _predict(model, adv).cpu() != yb.cpu()[idx]
            hit = idx[flipped]
            flip[i + hit] = e
            todo[hit] = False
    n_wrong = int((~clean_ok).sum())
    correct = int(clean_ok.sum())
    hist = {str(e): int((flip == e).sum()) for e in range(1, int(max_flip_eps) + 1)}
    hist[f">{int(max_flip_eps)}"] = int(((flip == -1) & clean_ok).sum())
    flips = flip[flip > 0].float()
    return {
        "patches": n, "clean_correct": correct, "clean_wrong": n_wrong, "eps": eps,
        "fgsm_llcm_identical": [float(v) / max(n, 1) for v in same],
        "misclassified_correct_after": {"fgsm": [float(v) / max(n_wrong, 1) for v in wrong_fgsm] if n_wrong else None,
                                        "llcm": [float(v) / max(n_wrong, 1) for v in wrong_llcm] if n_wrong else None},
        "bim_flip_eps_histogram": hist,
        "bim_flip_eps_median": float(flips.median()) if flips.numel() else None,
        "bim_flipped_share": float((flip > 0).sum()) / max(correct, 1),
        "bim_flip_eps_per_class": {str(c): {str(e): int(((flip == e) & (y.cpu() == c)).sum())
                                            for e in range(1, int(max_flip_eps) + 1)} for c in (0, 1)},
        "bim_max_eps": int(max_flip_eps),
    }


def _p(x: float) -> str:
    return f"{100 * x:.1f}%"


def flip_sentence(m: dict) -> str:
    h, c = m["bim_flip_eps_histogram"], max(m["clean_correct"], 1)
    parts = ", ".join(f"{_p(v / c)} at eps {k}" for k, v in h.items())
    return (f"BIM-to-flip on {m['patches']} test patches ({m['clean_correct']} correct when clean): flips {parts} "
            f"(smallest flipping eps; '>{m['bim_max_eps']}': not flipped up to eps {m['bim_max_eps']})")


def agreement_sentence(m: dict, k: int) -> str:
    e = f"{m['eps'][k]:g}"
    out = f"FGSM and LLCM produced identical images on {_p(m['fgsm_llcm_identical'][k])} of the patches at eps {e}"
    mc = m["misclassified_correct_after"]
    if m["clean_wrong"] and mc["fgsm"] is not None:
        out += (f"; of the {m['clean_wrong']} patches misclassified when clean, FGSM made {_p(mc['fgsm'][k])} and "
                f"LLCM {_p(mc['llcm'][k])} correct")
    return out


__all__ = ["measure", "flip_sentence", "agreement_sentence", "MAX_FLIP_EPS"]


def main(argv=None) -> int:
    """python -m recapfast.engine.flipdist MODEL DIR [--size 64] [--cap N] [--json OUT]: measure() on a labelled folder."""
    import argparse
    import json

    from recapfast.models.checkpoint import load_model
    from recapfast.data.folder import PatchDataset, discover

    ap = argparse.ArgumentParser(prog="python -m recapfast.engine.flipdist", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cap", type=int, default=None, help="at most this many patches (half per class)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    samples = discover(args.data)
    if args.cap:
        samples = [s for c in (0, 1) for s in [t for t in samples if t.label == c][:args.cap // 2]]
    ds = PatchDataset(samples, args.size)
    items = [it for it in (ds[i] for i in range(len(ds))) if it.patches is not None]
    x = torch.cat([it.patches for it in items])
    y = torch.tensor([it.label for it in items])
    res = measure(load_model(args.model).eval(), x, y)
    from recapfast.models.checkpoint import file_sha256

    res["model_sha256"] = file_sha256(args.model)
    print(flip_sentence(res))
    if args.json:
        from recapfast.io import atomic

        atomic.write_text(args.json, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``--attack auto`` as a cascade, as AutoAttack runs its ensemble: FGSM, then APGD-CE, then Square.

Per (patch, eps) cell, each attack runs only where every earlier attack failed:

- FGSM runs on every patch at every eps (one gradient for all eps, ``recapfast.sweep``); its own row stays
  the complete stand-alone FGSM row;
- APGD then runs, all eps in one batch of rows (``recapfast.attacks.rows``), only on the cells that are
  correct clean and survived FGSM; Square only on the cells that also survived APGD;
- a patch fooled at a smaller eps counts as fooled at every larger eps (its image lies in the larger
  box: on the grid the boxes ``[x - floor(eps), x + floor(eps)]`` are nested) and is not attacked again
  there; inside one APGD or Square run this happens as soon as the smaller eps is fooled.

So the APGD and Square rows of an ``auto`` run are cumulative: the APGD row is the accuracy after FGSM
then APGD, the Square row after all three (= the worst case).  Every cell's image is the one that fooled
it first (or, for a robust cell, the last stage's best attempt), so its perturbation metrics and JPEG
survival are those of a real image in its box.  ``stage`` records which attack fooled each cell first:
0 misclassified clean, 1 FGSM, 2 APGD, 3 Square, 4 robust; ``inherited`` marks the cells fooled at a
smaller eps.  The stand-alone rows of every attack stay available with ``--attack fgsm,apgd,square``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from recapfast.attacks.apgd import apgd_rows
from recapfast.attacks.single_step import SweepResult, _forward_chunks, eval_mode
from recapfast.attacks.square import square_rows

CASCADE = ("fgsm", "apgd", "square")
STAGES = ("clean", "fgsm", "apgd", "square", "robust")


def _inherit(eps: Sequence[float], fooled, image, stage, inherited) -> None:
    """In place: a cell not fooled at eps e takes the image and stage of the same patch's fooled cell at the
    largest smaller eps (ascending eps order, whatever order the run lists them in)."""
    order = sorted(range(len(eps)), key=lambda i: eps[i])
    for prev, cur in zip(order, order[1:]):
        take = fooled[prev] & ~fooled[cur]
        image[cur] = torch.where(take.view(-1, 1, 1, 1), image[prev], image[cur])
        stage[cur] = torch.where(take, stage[prev], stage[cur])
        inherited[cur] |= take
        fooled[cur] |= take


def cascade_extra(model, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float], res: SweepResult, config,
                  quantize: bool = True, metrics: str = "full"):
    """(SweepResult of the cumulative apgd and square rows, {attack: logits [E, B, C]}, stage [E, B] int64,
    inherited [E, B] bool) of one batch, given the batch's sweep ``res`` with the FGSM row and its images."""
    from recapfast.metrics import perturbation_stats

    xf = x.detach().to(torch.float32)
    n_eps, batch = len(eps), x.shape[0]
    clean_ok = res.clean_predictions == y
    fgsm_ok = res.predictions["fgsm"] == y.unsqueeze(0)
    image = res.images["fgsm"].to(torch.float32).clone()
    image[:, ~clean_ok] = xf[~clean_ok]
    fooled = ~(clean_ok.unsqueeze(0) & fgsm_ok)
    stage = torch.where(clean_ok, 1, 0).unsqueeze(0).repeat(n_eps, 1) * fooled
    inherited = torch.zeros_like(fooled)
    _inherit(eps, fooled, image, stage, inherited)
    predictions, linf, l2, mse, images, ssim, logits_out = {}, {}, {}, {}, {}, {}, {}
    for number, name in ((2, "apgd"), (3, "square")):
        run = apgd_rows if name == "apgd" else square_rows
        board = run(model, x, y, eps, getattr(config, name), quantize, attack=~fooled, dominance=True,
                    clean_logits=res.clean_logits)
        alive = ~fooled
        new = alive & board.view(board.fooled)
        image = torch.where(alive.view(n_eps, batch, 1, 1, 1), board.view(board.out), image)
        stage = torch.where(new, number, stage)
        inherited |= new & board.view(board.inherited)
        fooled |= new
        _inherit(eps, fooled, image, stage, inherited)
        with eval_mode(model), torch.no_grad():
            logits = _forward_chunks(model, image, 1024).reshape(n_eps, batch, -1)
        logits_out[name] = logits
        predictions[name] = logits.argmax(-1)
        adv = image.to(torch.uint8) if quantize else image.clone()
        stats = perturbation_stats(x, adv, metrics)
        linf[name], l2[name], mse[name], ssim[name] = stats["linf"], stats["l2"], stats["mse"], stats["ssim"]
        images[name] = adv
    stage = torch.where(fooled, stage, len(STAGES) - 1)
    return SweepResult(list(eps), xf.new_empty((0, 2)), predictions, linf, l2, mse, images, ssim), logits_out, \
        stage, inherited


__all__ = ["CASCADE", "STAGES", "cascade_extra"]

"""Transferability: perturbations crafted on a source model, evaluated on target models.

Per-image attacks (fgsm, llcm, bim, illc, pgd, mifgsm, apgd, square) are crafted on the source
for every batch and eps and fed to every model (the source's own column is the white-box number).
The universal perturbation is the source's data-free UAP at each xi (``recapfast.attacks.universal``; LaplacianCNN
sources only), added to every patch.  Per (perturbation, model) the matrix holds the accuracy, the success rate
(patches the model got right clean and wrong perturbed / patches it got right clean) and, for
UAPs, the fooling rate (prediction changed / patches).

:func:`cross_model_matrix` runs every model as the source in turn (Huang et al.'s transfer across
models): per (attack, eps) a square table, rows = source, columns = target.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from recapfast.attacks.single_step import ATTACKS, eval_mode, shared_gradient_images
from recapfast.data.folder import CLASS_NAMES, PatchDataset, discover, make_loader
from recapfast.attacks.iterative import IterativeConfig


@dataclass
class TransferCell:
    perturbation: str      # attack name or "uap"
    eps: float             # eps, or xi for a UAP
    model: str
    accuracy: float
    success_rate: float
    fooling_rate: float


@dataclass
class TransferResult:
    source: str
    targets: list[str]
    patches: int
    clean_accuracy: dict
    cells: list[TransferCell]
    iterative: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def models(self) -> list[str]:
        return [self.source] + [t for t in self.targets if t != self.source]

    def cell(self, perturbation: str, eps: float, model: str) -> TransferCell:
        for c in self.cells:
            if c.perturbation == perturbation and c.eps == float(eps) and c.model == model:
                return c
        raise KeyError(f"no transfer result for {perturbation} at {eps} on {model}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        from recapfast.reporting.tables import _jsonable

        return json.dumps(_jsonable(self.to_dict()), indent=2)

    def to_markdown(self) -> str:
        from recapfast.reporting.tables import _table, eps_label, pct

        head = ["perturbation (crafted on " + f"`{self.source}`)"] + \
            [f"`{m}`" + (" (source)" if m == self.source else "") for m in self.models]
        rows = [["clean accuracy"] + [pct(self.clean_accuracy[m]) for m in self.models]]
        keys = list(dict.fromkeys((c.perturbation, c.eps) for c in self.cells))
        for name, e in keys:
            label = f"UAP xi={eps_label(e)}" if name == "uap" else f"{name.upper()} eps={eps_label(e)}"
            cells = [self.cell(name, e, m) for m in self.models]
            if name == "uap":
                rows.append([label] + [f"{pct(c.accuracy)} (fooled {pct(c.fooling_rate)})" for c in cells])
            else:
                rows.append([label] + [f"{pct(c.accuracy)} (ASR {pct(c.success_rate)})" for c in cells])
        return "\n".join([f"### Transfer matrix: source `{self.source}` on {self.patches} patches", "",
                          "Accuracy under the perturbation (attack success rate: correct clean decisions flipped; "
                          "UAP: fooling rate = predictions changed)", "", _table(head, rows), ""])


def transfer_matrix(
    models: dict[str, nn.Module],
    root,
    source: str,
    targets: Sequence[str],
    attacks: Sequence[str] = ("fgsm", "bim"),
    eps: Sequence[float] = (2.0,),
    xi: Sequence[float] = (5.0,),
    size: int = 64,
    batch_size: int = 64,
    iterative: IterativeConfig | None = None,
    uap_iterations: int = 100,
    seed: int = 0,
    class_names: Sequence[str] = CLASS_NAMES,
    samples=None,
    progress: Callable[[int], None] | None = None,
    extra=None,
) -> TransferResult:
    """Per-image and universal perturbations crafted on ``models[source]``, evaluated on every model."""
    from recapfast.engine.trust import run_any_attack
    from recapfast.attacks.universal import apply_uap, data_free_uap

    names = [source] + [t for t in targets if t != source]
    missing = [n for n in names if n not in models]
    if missing:
        raise KeyError(f"no model named {', '.join(missing)}")
    src = models[source]
    eps = [float(e) for e in eps]
    xi = [float(v) for v in xi]
    iterative = iterative or IterativeConfig()
    if xi and not hasattr(src, "units"):
        from recapfast.errors import UserError

        raise UserError(f"--xi: the data-free UAP needs a LaplacianCNN source, {source} is not one (pass --xi '')")
    uaps = {v: data_free_uap(src, v, size=size, iterations=uap_iterations, seed=seed, model_name=source) for v in xi}
    samples = discover(root, class_names) if samples is None else samples
    loader = make_loader(PatchDataset(samples, size), batch_size, 0)
    keys = [(a, e) for a in attacks for e in eps] + [("uap", v) for v in xi]
    single = [a for a in attacks if a in ATTACKS]
    start = time.perf_counter()
    device = next(src.parameters()).device
    # On-device counters, read once at the end (no per-batch host sync): per model, [key, (correct, flipped, fooled)].
    counts = {m: torch.zeros((len(keys), 3), dtype=torch.long, device=device) for m in names}
    clean_correct = torch.zeros(len(names), dtype=torch.long, device=device)
    total = 0
    for batch in loader:
        x, y = batch.x.to(device), batch.y.to(device)
        if x.shape[0] == 0:
            if progress is not None:
                progress(len(batch.errors))
            continue
        total += x.shape[0]
        perturbed = {}
        if single:      # fgsm/llcm: one gradient per batch for every eps (the shared-gradient sweep)
            _, images = shared_gradient_images(src, x, y, eps, single, True)
            perturbed.update({(a, e): images[a][j].to(torch.float32) for a in single for j, e in enumerate(eps)})
        perturbed.update({(a, e): run_any_attack(src, x, y, e, a, True, iterative, extra)
                          for a in attacks if a not in ATTACKS for e in eps})
        perturbed.update({("uap", v): apply_uap(x, uaps[v].delta) for v in xi})
        for i, m in enumerate(names):
            net = models[m]
            with eval_mode(net), torch.inference_mode():
                clean_pred = net(x.float()).argmax(1)
                clean_ok = clean_pred == y
                rows = []
                for k in keys:
                    pred = net(perturbed[k].to(device)).argmax(1)
                    rows.append(torch.stack([(pred == y).sum(), (clean_ok & (pred != y)).sum(),
                                             (pred != clean_pred).sum()]))
            clean_correct[i] += clean_ok.sum()
            if rows:
                counts[m] += torch.stack(rows)
        if progress is not None:
            progress(len(batch.files) + len(batch.errors))
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    clean = dict(zip(names, clean_correct.tolist()))
    read = {m: counts[m].tolist() for m in names}
    cells = [TransferCell(k[0], k[1], m, ratio(read[m][j][0], total), ratio(read[m][j][1], clean[m]),
                          ratio(read[m][j][2], total)) for j, k in enumerate(keys) for m in names]
    c = iterative
    return TransferResult(source, list(names[1:]), total, {m: ratio(clean[m], total) for m in names}, cells,
                          {"steps": c.steps, "step_size": c.step_size, "pgd_seed": c.seed, "uap": "data-free",
                           "uap_iterations": uap_iterations}, time.perf_counter() - start)


@dataclass
class CrossModelResult:
    """Every model as the source: ``blocks[source]`` is that source's :class:`TransferResult`."""

    models: list[str]
    blocks: dict

    @property
    def patches(self) -> int:
        """Patches evaluated (every source's block reads the same files)."""
        return min((b.patches for b in self.blocks.values()), default=0)

    def to_dict(self) -> dict:
        return {"models": self.models, "blocks": {k: v.to_dict() for k, v in self.blocks.items()}}

    def to_json(self) -> str:
        from recapfast.reporting.tables import _jsonable

        return json.dumps(_jsonable(self.to_dict()), indent=2)

    def to_markdown(self) -> str:
        from recapfast.reporting.tables import _table, eps_label, pct

        first = next(iter(self.blocks.values()))
        keys = list(dict.fromkeys((c.perturbation, c.eps) for c in first.cells if c.perturbation != "uap"))
        parts = [f"### Cross-model transfer matrix on {first.patches} patches", "",
                 "Accuracy of each target (columns) under the perturbation crafted on each source (rows); the "
                 "diagonal is white-box. Clean accuracy: " +
                 ", ".join(f"`{m}` {pct(first.clean_accuracy[m])}" for m in self.models) + ".", ""]
        for name, e in keys:
            rows = [[f"`{src}`"] + [pct(self.blocks[src].cell(name, e, m).accuracy) for m in self.models]
                    for src in self.models]
            parts += [f"{name.upper()} eps={eps_label(e)}", "",
                      _table(["source"] + [f"`{m}`" for m in self.models], rows), ""]
        return "\n".join(parts)


def cross_model_matrix(models: dict[str, nn.Module], root, attacks: Sequence[str] = ("fgsm", "bim"),
                       eps: Sequence[float] = (2.0,), progress: Callable[[int], None] | None = None,
                       **kwargs) -> CrossModelResult:
    """:func:`transfer_matrix` with every model as the source (no UAPs), targets = all the others."""
    names = list(models)
    blocks = {src: transfer_matrix(models, root, src, [m for m in names if m != src], attacks, eps, xi=(),
                                   progress=progress, **kwargs) for src in names}
    return CrossModelResult(names, blocks)


__all__ = ["TransferCell", "TransferResult", "transfer_matrix", "CrossModelResult", "cross_model_matrix"]

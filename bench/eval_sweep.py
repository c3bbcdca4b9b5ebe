"""Eval sweep workload: clean + FGSM and LLCM at eps 1..5 over a folder of PNGs, every contender.

Two modes per image size, on the same images and the same model weights:
- model-only: the patches are already decoded into memory (uint8 tensors), batches are sliced;
- end-to-end: the folder is streamed with recapfast's loader (decode + center crop included),
  the same loader for every contender.

Reported: median seconds per pass over the folder, images/s, speedup = torchattacks-loop
seconds / contender seconds (same run), accuracies, and the agreement check.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .common import alternate, load_folder, log, median, synth_folder
from .peers import Contender, make_batch_fn

EPS = (1.0, 2.0, 3.0, 4.0, 5.0)
ATTACKS = ("fgsm", "llcm")
BASELINE = "torchattacks"


def _collect(fn, batches) -> dict:
    clean, adv = [], {a: [] for a in ATTACKS}
    for x, y in batches:
        c, out = fn(x, y)
        clean.append(c)
        for a in ATTACKS:
            if out.get(a) is not None:
                adv[a].append(out[a])
    return {"clean": torch.cat(clean), **{a: torch.cat(v, dim=1) if v else None for a, v in adv.items()}}


def _streamed(fn, root, size: int, batch_size: int, workers: int):
    from recapfast.data import PatchDataset, discover, make_loader

    dataset = PatchDataset(discover(root), size)

    def run():
        return _collect(fn, ((b.x, b.y) for b in make_loader(dataset, batch_size, workers)))
    return run


def accuracies(outcome: dict) -> dict:
    acc = {"clean": float(outcome["clean"].float().mean())}
    for a in ATTACKS:
        v = outcome.get(a)
        acc[a] = None if v is None else [float(r) for r in v.float().mean(1)]
    return acc


def agreement(outcomes: dict[str, dict], reference: str) -> list[dict]:
    """Per contender: FGSM/LLCM correct-count differences and per-image mismatches vs the reference."""
    ref = outcomes[reference]
    clean_ok = ref["clean"]
    rows = []
    for name, out in outcomes.items():
        if name == reference:
            continue
        row = {"contender": name, "clean_mismatches": int((out["clean"] != clean_ok).sum())}
        for a in ATTACKS:
            if out.get(a) is None:
                row[a] = None
                continue
            diff = (out[a].long().sum(1) - ref[a].long().sum(1)).tolist()
            row[a] = {"correct_count_diff_per_eps": diff,
                      "image_mismatches": int((out[a] != ref[a]).sum()),
                      "image_mismatches_on_clean_correct": int(((out[a] != ref[a]) & clean_ok).sum()),
                      "clean_misclassified": int((~clean_ok).sum())}
        row["fgsm_identical"] = row["fgsm"] is not None and not any(row["fgsm"]["correct_count_diff_per_eps"])
        rows.append(row)
    return rows


def run(model, contenders: Sequence[Contender], sizes: Sequence[int], counts: dict[int, int],
        batch_sizes: dict[int, int], reps: int, workers: int = 0, modes=("model-only", "end-to-end")) -> dict:
    avail = [c for c in contenders if c.available]
    fns = {c.name: make_batch_fn(c, model, EPS, ATTACKS) for c in avail}
    results = {"eps": list(EPS), "attacks": list(ATTACKS), "reps": reps, "workers_end_to_end": workers,
               "baseline": BASELINE, "sizes": []}
    for size in sizes:
        root = synth_folder(size, counts[size] // 2)
        x_all, y_all = load_folder(root, size)
        bs = batch_sizes[size]
        batches = [(x_all[i:i + bs], y_all[i:i + bs]) for i in range(0, x_all.shape[0], bs)]
        warm = {n: (lambda f=f: f(*batches[0])) for n, f in fns.items()}
        entry = {"size": size, "images": int(x_all.shape[0]), "batch_size": bs, "folder": root.name, "modes": {}}
        outcomes = {}
        for mode in modes:
            if mode == "model-only":
                passes = {n: (lambda f=f, n=n: outcomes.__setitem__(n, _collect(f, batches))) for n, f in fns.items()}
            else:
                passes = {n: _streamed(f, root, size, bs, workers) for n, f in fns.items()}
            log(f"bench eval-sweep {size}px {mode}: {len(passes)} contenders x {reps} reps, {x_all.shape[0]} images")
            times = alternate(passes, reps, warmup=warm if mode == "model-only" else {})
            base = median(times[BASELINE]) if BASELINE in times else None
            rows = []
            for n, ts in times.items():
                t = median(ts)
                rows.append({"contender": n, "seconds": round(t, 4), "seconds_all": [round(v, 4) for v in ts],
                             "images_per_s": round(x_all.shape[0] / t, 2),
                             "speedup_vs_torchattacks": round(base / t, 2) if base else None})
                log(f"  {n:18s} {t:8.3f} s  {x_all.shape[0] / t:8.1f} img/s"
                    + (f"  x{base / t:5.2f} vs torchattacks" if base else ""))
            entry["modes"][mode] = rows
        if outcomes:
            reference = "recapfast-torch" if "recapfast-torch" in outcomes else next(iter(outcomes))
            entry["accuracy"] = {n: accuracies(o) for n, o in outcomes.items()}
            entry["agreement_reference"] = reference
            entry["agreement"] = agreement(outcomes, reference)
        results["sizes"].append(entry)
    return results

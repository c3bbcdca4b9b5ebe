"""Eval sweep workload: clean + FGSM and LLCM at eps 1..5 over a folder of PNGs, every contender.

Two modes per image size, on the same images and the same model weights:
- model-only: the patches are already decoded into memory (uint8 tensors), batches are sliced;
- end-to-end: what a user runs. For recapfast that is the ``recapfast eval`` code path
  (``evaluate_folder``: loader, sweep, every default metric: L-inf, L2, PSNR, SSIM, counters);
  for the others, recapfast's loader (decode + center crop) feeding their batch function.

Per thread count, size and mode: median CPU and wall seconds of >= 7 alternating repetitions,
images per CPU second, and ratios to the skilled 20-line script (the primary bar) and to the
torchattacks loop from CPU-time medians; accuracies and the per-image agreement check.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .common import alternate, contender_settings, load_folder, log, summary, synth_folder
from .peers import Contender, make_batch_fn

EPS = (1.0, 2.0, 3.0, 4.0, 5.0)
ATTACKS = ("fgsm", "llcm")
PRIMARY = "skilled"
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
    from recapfast.data.folder import PatchDataset, discover, make_loader

    dataset = PatchDataset(discover(root), size)

    def run():
        return _collect(fn, ((b.x, b.y) for b in make_loader(dataset, batch_size, workers)))
    return run


def _recapfast_eval(model, contender: Contender, root, size: int, batch_size: int, workers: int, threads: int):
    """``recapfast eval``'s library path with its defaults (metrics="full"), in the contender's settings."""
    from recapfast.engine.evaluate import evaluate_folder

    def run():
        with contender_settings(contender.backend, threads):
            return evaluate_folder(model, root, EPS, ATTACKS, size=size, batch_size=batch_size, workers=workers,
                                   on_error=None, metrics="full")
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


def _rows(times: dict, images: int) -> list[dict]:
    base = {name: summary(t, images) for name, t in times.items()}
    rows = []
    for name, s in base.items():
        row = {"contender": name, **s}
        for key, ref in (("vs_skilled", PRIMARY), ("vs_torchattacks", BASELINE)):
            row[key] = round(base[ref]["cpu_s"] / s["cpu_s"], 2) if ref in base and s["cpu_s"] > 0 else None
        rows.append(row)
        log(f"  {name:16s} cpu {s['cpu_s']:8.3f} s  wall {s['wall_s']:8.3f} s  {s['per_s_cpu']:8.1f} img/cpu-s"
            + (f"  x{row['vs_skilled']:5.2f} vs 20-liner" if row["vs_skilled"] else "")
            + (f"  x{row['vs_torchattacks']:5.2f} vs torchattacks" if row["vs_torchattacks"] else ""))
    return rows


def run(model, contenders: Sequence[Contender], sizes: Sequence[int], counts: dict[int, int],
        batch_sizes: dict[int, int], reps: int, threads: Sequence[int] = (1,), workers: int = 0,
        modes=("model-only", "end-to-end")) -> dict:
    avail = [c for c in contenders if c.available]
    results = {"eps": list(EPS), "attacks": list(ATTACKS), "reps": reps, "workers_end_to_end": workers,
               "primary": PRIMARY, "baseline": BASELINE, "runs": []}
    for n_threads in threads:
        fns = {c.name: make_batch_fn(c, model, EPS, ATTACKS, threads=n_threads) for c in avail}
        run_entry = {"threads": n_threads, "sizes": []}
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
                    passes = {n: (lambda f=f, n=n: outcomes.__setitem__(n, _collect(f, batches)))
                              for n, f in fns.items()}
                else:
                    passes = {c.name: (_recapfast_eval(model, c, root, size, bs, workers, n_threads)
                                       if c.name.startswith("recapfast") else
                                       _streamed(fns[c.name], root, size, bs, workers)) for c in avail}
                log(f"bench eval-sweep {size}px {mode}, {n_threads} thread(s): {len(passes)} contenders x {reps} "
                    f"reps, {x_all.shape[0]} images")
                times = alternate(passes, reps, warmup=warm if mode == "model-only" else None)
                entry["modes"][mode] = _rows(times, int(x_all.shape[0]))
            if outcomes:
                reference = "recapfast-torch" if "recapfast-torch" in outcomes else next(iter(outcomes))
                entry["accuracy"] = {n: accuracies(o) for n, o in outcomes.items()}
                entry["agreement_reference"] = reference
                entry["agreement"] = agreement(outcomes, reference)
            mo = {r["contender"]: r for r in entry["modes"].get("model-only", [])}
            ee = {r["contender"]: r for r in entry["modes"].get("end-to-end", [])}
            entry["eval_over_sweep"] = {n: round(ee[n]["cpu_s"] / mo[n]["cpu_s"], 2) for n in mo
                                        if n.startswith("recapfast") and n in ee}
            run_entry["sizes"].append(entry)
        results["runs"].append(run_entry)
    return results

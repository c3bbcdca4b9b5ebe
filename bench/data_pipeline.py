"""Data-pipeline workload: decode + center-crop patches alone, images/s by DataLoader worker count.

A full pass of recapfast's streaming loader (``recapfast.data.folder.make_loader``) over a PNG folder,
worker start-up included (the loader is not persistent, as in ``recapfast eval``).
"""
from __future__ import annotations

from .common import alternate, log, median, synth_folder


def run(folders: dict[int, tuple[int, int]], reps: int, workers=(0, 1, 2), batch: int = 64) -> dict:
    from recapfast.data.folder import PatchDataset, discover, make_loader

    out = []
    for size, (count, seed) in folders.items():
        root = synth_folder(size, count, seed=seed)
        dataset = PatchDataset(discover(root), size)

        def one_pass(w):
            def go():
                n = 0
                for b in make_loader(dataset, batch, w):
                    n += b.x.shape[0]
                return n
            return go
        log(f"bench data-pipeline {size}px: workers {list(workers)} x {reps} reps, {len(dataset)} files")
        times = alternate({f"workers={w}": one_pass(w) for w in workers}, reps, warmup={"w0": one_pass(0)})
        for w in workers:
            t = median(times[f"workers={w}"]["cpu"])
            out.append({"size": size, "files": len(dataset), "workers": w, "seconds": round(t, 4),
                        "images_per_s": round(len(dataset) / t, 1)})
            log(f"  workers={w}: {len(dataset) / t:8.1f} img/s")
    return {"batch": batch, "reps": reps, "rows": out}

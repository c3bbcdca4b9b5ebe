"""Scaling workload: CPU seconds vs number of eps (1, 5, 10, 20): recapfast, the 20-liner, the torchattacks loop.

FGSM + LLCM on one in-memory batch at 64 px. recapfast's cost grows by one batched forward per extra
eps (per attack); the loop's by a forward + backward + forward. Marginal cost per eps = least-squares
slope of CPU seconds over the number of eps, reported as a ratio to the loop's slope.
"""
from __future__ import annotations

from .common import alternate, load_folder, log, median, synth_folder
from .peers import make_batch_fn

COUNTS = (1, 5, 10, 20)
NAMES = ("recapfast-ext", "recapfast-torch", "skilled", "torchattacks")


def _slope(xs, ys) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def run(model, contenders, reps: int, batch: int = 32, size: int = 64, counts=COUNTS, count: int = 64,
        threads: int = 1) -> dict:
    x, y = load_folder(synth_folder(size, count), size)
    x, y = x[:batch], y[:batch]
    names = [c for c in contenders if c.available and c.name in NAMES]
    rows = {c.name: [] for c in names}
    log(f"bench scaling: eps counts {list(counts)}, {len(names)} contenders x {reps} reps, batch {batch}, {size} px")
    for n in counts:
        eps = [float(e) for e in range(1, n + 1)]
        fns = {c.name: make_batch_fn(c, model, eps, threads=threads) for c in names}
        times = alternate({k: (lambda f=f: f(x, y)) for k, f in fns.items()}, reps)
        for k, ts in times.items():
            rows[k].append(round(median(ts["cpu"]), 4))
        log("  " + "  ".join(f"{k} {n} eps {median(ts['cpu']):.3f} s" for k, ts in times.items()))
    slopes = {k: _slope(list(counts), v) for k, v in rows.items()}
    loop = slopes.get("torchattacks")
    return {"batch": batch, "size": size, "threads": threads, "attacks": ["fgsm", "llcm"], "eps_counts": list(counts),
            "reps": reps, "cpu_seconds": rows, "marginal_cpu_seconds_per_eps": {k: round(v, 5) for k, v in slopes.items()},
            "marginal_ratio_vs_torchattacks": {k: round(v / loop, 3) for k, v in slopes.items()} if loop else {}}

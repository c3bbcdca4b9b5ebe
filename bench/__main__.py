"""recapfast benchmark suite: recapfast vs torchattacks, foolbox and ART on the same model and images.

    python -m bench [--quick | --full] [--only eval-sweep,scaling,train-step,data-pipeline,kernels]
    recapfast bench ...          (the same suite)

Writes bench/results/<machine>.json and .md (see bench/NOTES.md for the method and the
performance work; `python -m bench.readme` prints the README table from the committed file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import common
from .common import log

WORKLOADS = ("eval-sweep", "scaling", "train-step", "data-pipeline", "kernels")


def plan(mode: str) -> dict:
    if mode == "quick":
        # Sized for a shared 2-core machine: the 256 px folder is one batch of 8 images.
        return {"sizes": (64, 128, 256), "counts": {64: 64, 128: 16, 256: 8}, "batch": {64: 64, 128: 16, 256: 8},
                "reps": 3, "scaling_reps": 3, "scaling_batch": 16, "train_reps": 5, "robust_iters": 20,
                "pipeline": {64: (300, 11), 256: (16, 2024)}, "kernel_sizes": (64,), "kernel_reps": 3}
    if mode == "full":
        return {"sizes": (64, 128, 256, 512), "counts": {64: 512, 128: 256, 256: 128, 512: 32},
                "batch": {64: 64, 128: 64, 256: 32, 512: 8}, "reps": 5, "scaling_reps": 5, "scaling_batch": 64,
                "train_reps": 9, "robust_iters": 300, "pipeline": {64: (300, 11), 256: (64, 2024)},
                "kernel_sizes": (64, 256, 512), "kernel_reps": 7}
    return {"sizes": (64, 128, 256), "counts": {64: 256, 128: 128, 256: 64}, "batch": {64: 64, 128: 64, 256: 32},
            "reps": 3, "scaling_reps": 3, "scaling_batch": 64, "train_reps": 7, "robust_iters": 100,
            "pipeline": {64: (300, 11), 256: (64, 2024)}, "kernel_sizes": (64, 256), "kernel_reps": 5}


def kernels_workload(sizes, reps: int) -> dict:
    from recapfast import ops

    from .kernels import cases, timeit_pair

    ops.set_backend("ext")
    ops.active_backend()
    rows = []
    for size in sizes:
        batch = 64 if size <= 256 else 16
        for name, ext_fn, ref_fn in cases(size, batch, "cpu"):
            t_ext, t_ref = timeit_pair(ext_fn, ref_fn, reps, "cpu")
            rows.append({"op": name, "size": size, "batch": batch, "ext_ms": round(t_ext * 1e3, 3),
                         "torch_ms": round(t_ref * 1e3, 3), "speedup": round(t_ref / t_ext, 2)})
            log(f"  kernels {name:30s} {size}px x{t_ref / t_ext:5.2f}")
    return {"reps": reps, "rows": rows}


def run_suite(mode: str = "default", only=None, threads: int | None = None, model_path: str | None = None,
              out_dir: Path | None = None, contender_names=None, stamp: bool = True,
              sizes=None) -> tuple[dict, Path]:
    from recapfast import ops

    from . import data_pipeline, eval_sweep, peers, scaling, train_step
    from .report import markdown

    only = list(only or WORKLOADS)
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        raise ValueError(f"bench: unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    p = plan(mode)
    if sizes:
        bad_sizes = [z for z in sizes if z not in p["counts"]]
        if bad_sizes:
            raise ValueError(f"bench: --sizes {bad_sizes} not in the {mode} plan ({', '.join(map(str, p['sizes']))})")
        p = dict(p, sizes=tuple(sizes))
    n_threads = common.choose_threads(threads)
    torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    meta = common.machine_meta("cpu", n_threads, mode)
    log(f"bench: {meta['machine']}, {meta['cores']} cores, {n_threads} torch threads, load {meta['load_avg_1min_at_start']}, "
        f"mode {mode}")
    try:
        ops.set_backend("ext")
        ops.active_backend()
        ext_error = None
    except RuntimeError as err:
        ext_error = str(err).splitlines()[0]
    cont = peers.contenders(contender_names)
    if ext_error:
        for c in cont:
            if c.name == "recapfast-ext":
                c.missing = f"C++ extension unavailable: {ext_error}"
    missing = [c for c in cont if not c.available]
    for c in missing:
        log(f"bench: {c.label}: MISSING ({c.missing}); install: {peers.PEER_INSTALL}")
    model, model_info = common.get_model(model_path)
    results = {"meta": meta, "model": model_info, "plan": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                                                            for k, v in p.items()},
               "contenders": [{"name": c.name, "label": c.label, "version": c.version,
                               "status": "ok" if c.available else "missing", "missing_reason": c.missing,
                               "llcm": c.has_llcm, "notes": c.notes} for c in cont],
               "peer_install": peers.PEER_INSTALL, "workloads": {}}
    t0 = time.perf_counter()
    if "eval-sweep" in only:
        results["workloads"]["eval_sweep"] = eval_sweep.run(model, cont, p["sizes"], p["counts"], p["batch"], p["reps"])
    if "scaling" in only:
        results["workloads"]["scaling"] = scaling.run(model, cont, p["scaling_reps"], batch=p["scaling_batch"],
                                                      **p.get("scaling_args", {}))
    if "train-step" in only:
        ops.set_backend("ext" if not ext_error else "torch")
        results["workloads"]["train_step"] = train_step.timing(model, p["train_reps"], **p.get("train_args", {}))
        results["workloads"]["train_step"]["backend"] = ops.active_backend()
        if p["robust_iters"]:
            results["workloads"]["train_robustness"] = train_step.robustness(model, p["robust_iters"],
                                                                              **p.get("robust_args", {}))
    if "data-pipeline" in only:
        results["workloads"]["data_pipeline"] = data_pipeline.run(p["pipeline"], p["reps"])
    if "kernels" in only and not ext_error:
        results["workloads"]["kernels"] = kernels_workload(p["kernel_sizes"], p["kernel_reps"])
    meta["seconds_total"] = round(time.perf_counter() - t0, 1)
    meta["load_avg_1min_at_end"] = common.load_average()
    out_dir = Path(out_dir or common.RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = meta["slug"] if stamp else "bench"
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(results))
    log(f"bench: wrote {json_path} and {json_path.with_suffix('.md')} in {meta['seconds_total']:.0f} s")
    return results, json_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores")
    size.add_argument("--full", action="store_true", help="more images, 512 px, more repetitions")
    parser.add_argument("--only", default=None, help=f"comma-separated workloads ({', '.join(WORKLOADS)})")
    parser.add_argument("--contenders", default=None, help="comma-separated contender names (default: all)")
    parser.add_argument("--sizes", default=None, help="comma-separated eval-sweep image sizes (default: the mode's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores, or 1 when the "
                                                                  "machine is oversubscribed)")
    parser.add_argument("--model", default=None, help="a .safetensors model (default: bundled baseline)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    split = (lambda s: [v.strip() for v in s.split(",") if v.strip()] if s else None)
    try:
        sizes = tuple(int(v) for v in split(args.sizes)) if args.sizes else None
        results, path = run_suite(mode, split(args.only), args.threads, args.model, args.out, split(args.contenders),
                                  sizes=sizes)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())

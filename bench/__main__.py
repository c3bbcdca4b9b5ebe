"""recapfast benchmark suite: recapfast vs a skilled 20-line PyTorch script, torchattacks, foolbox and ART.

    python -m bench [--quick | --full] [--only WORKLOADS] [--threads 1,2] [--contenders ...]
    recapfast bench ...          (the same suite, from a source checkout: it calls `run`)

Writes bench/results/<machine>.json and .md (method and the performance work: bench/NOTES.md;
`python -m bench.readme` prints the README section from the committed file).
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

WORKLOADS = ("eval-sweep", "scaling", "train-step", "screen-probe", "floor", "data-pipeline", "kernels", "auto")


def plan(mode: str) -> dict:
    if mode == "quick":
        # Sized for a shared 2-core machine: about 15-25 minutes with every peer installed.
        return {"sizes": (64, 256), "counts": {64: 128, 256: 16}, "batch": {64: 64, 256: 8}, "reps": 7,
                "scaling_reps": 7, "scaling_batch": 32, "train_reps": 7, "robust_iters": 20, "screen_reps": 7,
                "screen_count": 16, "floor_sizes": (64, 256), "floor_reps": 7,
                "pipeline": {64: (300, 11), 256: (16, 2024)}, "kernel_sizes": (64,), "kernel_reps": 7,
                "auto_sizes": (64, 256), "auto_counts": {64: 4, 256: 1}, "auto_reps": 7}
    if mode == "full":
        return {"sizes": (64, 128, 256, 512), "counts": {64: 512, 128: 256, 256: 128, 512: 32},
                "batch": {64: 64, 128: 64, 256: 32, 512: 8}, "reps": 9, "scaling_reps": 9, "scaling_batch": 64,
                "train_reps": 9, "robust_iters": 300, "screen_reps": 9, "screen_count": 64,
                "floor_sizes": (64, 256, 512), "floor_reps": 9, "pipeline": {64: (300, 11), 256: (64, 2024)},
                "kernel_sizes": (64, 256, 512), "kernel_reps": 9,
                "auto_sizes": (64, 256), "auto_counts": {64: 32, 256: 4}, "auto_reps": 9}
    return {"sizes": (64, 128, 256), "counts": {64: 256, 128: 128, 256: 64}, "batch": {64: 64, 128: 64, 256: 32},
            "reps": 7, "scaling_reps": 7, "scaling_batch": 64, "train_reps": 7, "robust_iters": 100,
            "screen_reps": 7, "screen_count": 32, "floor_sizes": (64, 256), "floor_reps": 7,
            "pipeline": {64: (300, 11), 256: (64, 2024)}, "kernel_sizes": (64, 256), "kernel_reps": 7,
            "auto_sizes": (64, 256), "auto_counts": {64: 16, 256: 2}, "auto_reps": 7}


def kernels_workload(sizes, reps: int, threads: int) -> dict:
    from recapfast import ops

    from .kernels import cases, timeit_pair

    rows = []
    with common.contender_settings("ext", threads):
        ops.active_backend()
        for size in sizes:
            batch = 64 if size <= 256 else 16
            for name, ext_fn, ref_fn in cases(size, batch, "cpu"):
                t_ext, t_ref = timeit_pair(ext_fn, ref_fn, reps, "cpu")
                rows.append({"op": name, "size": size, "batch": batch, "ext_ms": round(t_ext * 1e3, 3),
                             "torch_ms": round(t_ref * 1e3, 3), "speedup": round(t_ref / t_ext, 2)})
                log(f"  kernels {name:30s} {size}px x{t_ref / t_ext:5.2f}")
    return {"reps": reps, "threads": threads, "rows": rows}


class OptionError(ValueError):
    """A bad option value, found before any work: ``option`` names it (``--only``), ``message`` says what is allowed."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


def parse_list(text: str | None, cast=str, option: str | None = None) -> list | None:
    """A comma-separated option text as a list (None when not given); OptionError naming ``option`` for a bad item."""
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()] if text else None
    except ValueError as err:
        raise OptionError(option or "option", f"{text!r}: give comma-separated positive integers") from err


def check_options(only, threads) -> None:
    """OptionError for an unknown workload or a thread count below 1."""
    bad = [w for w in only or [] if w not in WORKLOADS]
    if bad:
        raise OptionError("--only", f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    if any(t < 1 for t in threads or []):
        raise OptionError("--threads", f"{','.join(map(str, threads))}: give comma-separated positive integers")


def run(mode: str = "default", only: str | None = None, threads: str | None = None, model: str | None = None,
        out: str | Path | None = None, contenders: str | None = None, sizes: str | None = None) -> str:
    """The suite from its options as typed (``only``, ``threads``, ``contenders``, ``sizes``: comma-separated
    texts); returns the results' markdown.  Bad values raise OptionError (naming the option) before any work."""
    only_list, thread_counts = parse_list(only, option="--only"), parse_list(threads, int, "--threads")
    size_list = parse_list(sizes, int, "--sizes")
    _, path = run_suite(mode, only_list, thread_counts, model, out, parse_list(contenders, option="--contenders"),
                        sizes=size_list)
    return path.with_suffix(".md").read_text()


def run_suite(mode: str = "default", only=None, threads=None, model_path: str | None = None,
              out_dir: Path | None = None, contender_names=None, stamp: bool = True,
              sizes=None) -> tuple[dict, Path]:
    """Run the workloads and write the results; ``threads``: the thread counts of the eval sweep (the first one
    is used by every other workload and by the README)."""
    from recapfast import ops
    from recapfast.io.atomic import write_text

    from . import data_pipeline, eval_sweep, floor, peers, scaling, screen_probe, train_step
    from .report import markdown

    check_options(only, threads)
    only = list(only or WORKLOADS)
    p = plan(mode)
    if sizes:
        bad_sizes = [z for z in sizes if z not in p["counts"]]
        if bad_sizes:
            raise OptionError("--sizes", f"{bad_sizes} not in the {mode} plan ({', '.join(map(str, p['sizes']))})")
        p = dict(p, sizes=tuple(sizes))
    cores = os.cpu_count() or 1
    threads = list(threads or sorted({1, cores}))
    main_threads = threads[0]
    torch.manual_seed(0)
    meta = common.machine_meta("cpu", threads, mode)
    log(f"bench: {meta['machine']}, {meta['cores']} cores, threads {threads}, load {meta['load_avg_1min_at_start']}, "
        f"mode {mode}")
    try:
        with common.contender_settings("ext", main_threads):
            ops.active_backend()
        ext_error = None
    except RuntimeError as err:
        ext_error = str(err).splitlines()[0]
    cont = peers.contenders(contender_names)
    if ext_error:
        for c in cont:
            if c.name == "recapfast-ext":
                c.missing = f"C++ extension unavailable: {ext_error}"
    for c in cont:
        if not c.available:
            log(f"bench: {c.label}: MISSING ({c.missing}); install: {peers.PEER_INSTALL}")
    model, model_info = common.get_model(model_path)
    results = {"meta": meta, "model": model_info,
               "plan": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in p.items()},
               "contenders": [{"name": c.name, "label": c.label, "version": c.version, "backend": c.backend,
                               "status": "ok" if c.available else "missing", "missing_reason": c.missing,
                               "llcm": c.has_llcm, "notes": c.notes} for c in cont],
               "peer_install": peers.PEER_INSTALL, "workloads": {}}
    w = results["workloads"]
    t0 = time.perf_counter()
    if "eval-sweep" in only:
        w["eval_sweep"] = eval_sweep.run(model, cont, p["sizes"], p["counts"], p["batch"], p["reps"], threads=threads)
    if "scaling" in only:
        w["scaling"] = scaling.run(model, cont, p["scaling_reps"], batch=p["scaling_batch"], threads=main_threads,
                                   **p.get("scaling_args", {}))
    if "train-step" in only:
        w["train_step"] = train_step.timing(model, p["train_reps"], threads=main_threads, **p.get("train_args", {}))
        if p["robust_iters"]:
            w["train_robustness"] = train_step.robustness(model, p["robust_iters"], **p.get("robust_args", {}))
    if "screen-probe" in only:
        w["screen_probe"] = screen_probe.run(model, p["screen_reps"], count=p["screen_count"], threads=main_threads,
                                             **p.get("screen_args", {}))
    if "floor" in only:
        w["floor"] = floor.run(model, p["floor_sizes"], p["floor_reps"], threads=main_threads)
    if "data-pipeline" in only:
        w["data_pipeline"] = data_pipeline.run(p["pipeline"], p["reps"])
    if "auto" in only:
        import recapfast as rf

        from . import auto

        models = {name: rf.load_model(name) for name in ("baseline", "robust")}
        partial = Path(out_dir or common.RESULTS) / f"auto-{meta['slug']}.partial.json"
        done: list = []

        def saved(rows):                      # the rows finished so far, for a run cut short
            partial.parent.mkdir(parents=True, exist_ok=True)
            write_text(partial, json.dumps({"meta": meta, "rows": done + rows}, indent=1) + "\n")
        w["auto"] = auto.run(models, p["auto_sizes"], p["auto_counts"], p["auto_reps"], threads=main_threads,
                             saved=saved)
        done = list(w["auto"]["rows"])
        for extra in threads[1:]:             # the other thread counts: the baseline at 64 px, no ART
            more = auto.run({"baseline": models["baseline"]}, (64,), p["auto_counts"], p["auto_reps"], threads=extra,
                            art_sizes=(), saved=saved)
            w["auto"]["rows"] += more["rows"]
        partial.unlink(missing_ok=True)
    if "kernels" in only and not ext_error and p["kernel_sizes"]:
        w["kernels"] = kernels_workload(p["kernel_sizes"], p["kernel_reps"], main_threads)
    meta["seconds_total"] = round(time.perf_counter() - t0, 1)
    meta["load_avg_1min_at_end"] = common.load_average()
    out_dir = Path(out_dir or common.RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = meta["slug"] if stamp else "bench"
    if only == ["auto"]:
        stem = f"auto-{stem}"             # its own file: the README's main section keeps the newest full run
    json_path = out_dir / f"{stem}.json"
    write_text(json_path, json.dumps(results, indent=1) + "\n")
    write_text(json_path.with_suffix(".md"), markdown(results))
    log(f"bench: wrote {json_path} and {json_path.with_suffix('.md')} in {meta['seconds_total']:.0f} s")
    return results, json_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about 15-25 minutes on 2 CPU cores")
    size.add_argument("--full", action="store_true", help="more images, 512 px, more repetitions")
    parser.add_argument("--only", default=None, help=f"comma-separated workloads ({', '.join(WORKLOADS)})")
    parser.add_argument("--contenders", default=None, help="comma-separated contender names (default: all)")
    parser.add_argument("--sizes", default=None, help="comma-separated eval-sweep image sizes (default: the mode's)")
    parser.add_argument("--threads", default=None, help="comma-separated torch thread counts for the eval sweep "
                                                        "(default: 1 and the core count); the first is used "
                                                        "by the other workloads and reported in the README")
    parser.add_argument("--model", default=None, help="a .safetensors model (default: bundled baseline)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    try:
        report = run(mode, args.only, args.threads, args.model, args.out, args.contenders, args.sizes)
    except ValueError as err:
        print(f"error: bench: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())

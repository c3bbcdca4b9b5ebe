"""The bench's steps for the prepared GPU run, one process per step (bench/gpu/run.sh runs them in order;
docs/gpu-run.md says what each measures).

    python -m bench.gpu STEP --work DIR [--device cuda|cpu] [--dry-run]

Steps (``STEPS``): data (synthesize every folder the others read), sweep (FGSM/LLCM eps 1..5 at each size:
recapfast ext and torch backends, the skilled 20-line script, the torchattacks loop; model-only and
end-to-end), kernels (every extension op vs its reference on the device; references only without the
extension), auto (``AUTO_WORKLOADS``: the bench's ``auto`` workload when this tree has one, and
``recapfast eval --attack auto`` timed through the CLI), train (one optimizer step: plain, robust exact,
robust fd), screen (``recapfast screen`` of a synthesized folder through the CLI, probing on and off),
merge (every step's JSON into one results file). Each step writes DIR/<step>.json; ``--dry-run`` runs the
same code on tiny sizes (the test that keeps this script alive: tests/test_gpu_script.py).
On CUDA every timing synchronizes the device; ratios are taken between wall-time medians.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import common, eval_sweep, peers, train_step
from ..common import alternate, contender_settings, load_folder, log, summary, synth_folder

STEPS = ("data", "sweep", "kernels", "auto", "train", "screen", "merge")
SWEEP_CONTENDERS = ("recapfast-ext", "recapfast-torch", "skilled", "torchattacks")
# The `auto` hook: bench modules tried in order for an `auto` workload (issue 23 adds it to bench/); each must
# offer run(model, contenders, sizes, counts, batch_sizes, reps, device=...) -> dict, like eval_sweep.run.
AUTO_WORKLOADS = ("bench.auto",)

PLANS = {
    "gpu": {"sizes": (64, 256, 512), "counts": {64: 512, 256: 128, 512: 64}, "batch": {64: 256, 256: 64, 512: 16},
            "reps": 5, "auto_counts": {64: 64, 256: 32, 512: 16}, "auto_args": [],
            "kernel_batch": {64: 64, 256: 64, 512: 16},
            "train": {"batch": 64, "size": 64, "count": 64, "reps": 5},
            "screen": {"size": 256, "count": 32, "tile": 64}},
    "dry": {"sizes": (32,), "counts": {32: 8}, "batch": {32: 4}, "reps": 1, "auto_counts": {32: 4},
            "kernel_batch": {32: 2},
            "auto_args": ["--apgd-steps", "2", "--square-queries", "4"],
            "train": {"batch": 4, "size": 32, "count": 4, "reps": 1},
            "screen": {"size": 32, "count": 2, "tile": 16}},
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _torch_only() -> bool:
    """RECAPFAST_BACKEND=torch (the dry run): no contender may build the extension, not even under 'auto'."""
    return os.environ.get("RECAPFAST_BACKEND", "").strip().lower() == "torch"


def _auto_backend() -> str:
    """The backend of the contenders that run 'the model as shipped' (peers, training): auto, torch in a dry run."""
    return "torch" if _torch_only() else "auto"


def _ext_problem() -> str | None:
    """Why the recapfast-ext contender cannot run here (None: it can)."""
    from recapfast import ops

    if _torch_only():
        return "RECAPFAST_BACKEND=torch: the extension is not built in this run"
    try:
        with contender_settings("ext", torch.get_num_threads()):
            ops.active_backend()
    except RuntimeError as err:
        return f"C++ extension unavailable: {str(err).splitlines()[0]}"
    return None


def _contenders(names) -> list:
    cont = peers.contenders(names)
    problem = _ext_problem() if "recapfast-ext" in names else None
    for c in cont:
        if c.name == "recapfast-ext" and problem:
            c.missing = problem
        if c.backend == "auto":
            c.backend = _auto_backend()
    return cont


def _described(cont) -> list[dict]:
    return [{"name": c.name, "version": c.version, "backend": c.backend, "missing": c.missing} for c in cont]


def _on(fn, device: str):
    """A batch function fed CPU batches (the loader's) on ``device``."""
    return lambda x, y: fn(x.to(device), y.to(device))


def _wall_rows(times: dict, images: int) -> list[dict]:
    base = {name: summary(t, images) for name, t in times.items()}
    rows = []
    for name, s in base.items():
        row = {"contender": name, **s}
        for key, ref in (("vs_skilled", eval_sweep.PRIMARY), ("vs_torchattacks", eval_sweep.BASELINE)):
            row[key] = round(base[ref]["wall_s"] / s["wall_s"], 2) if ref in base and s["wall_s"] > 0 else None
        rows.append(row)
        log(f"  {name:16s} wall {s['wall_s']:8.4f} s  {s['per_s_wall']:9.1f} img/s"
            + (f"  x{row['vs_torchattacks']:.2f} vs torchattacks" if row["vs_torchattacks"] else "")
            + (f"  x{row['vs_skilled']:.2f} vs 20-liner" if row["vs_skilled"] else ""))
    return rows


def step_data(plan: dict, device: str) -> dict:
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    folders, t0 = [], time.perf_counter()
    wanted = [(z, plan["counts"][z] // 2, 2024) for z in plan["sizes"]]
    wanted += [(z, plan["auto_counts"][z] // 2, 77) for z in plan["sizes"]]
    wanted += [(plan["train"]["size"], plan["train"]["count"], 2024),
               (plan["screen"]["size"], plan["screen"]["count"] // 2, 31)]
    for size, count, seed in dict.fromkeys(wanted):
        folders.append(synth_folder(size, count, seed=seed, workers=workers).name)
    return {"folders": folders, "workers": workers, "seconds": round(time.perf_counter() - t0, 1)}


def _save(work: Path, step: str, result: dict) -> None:
    """WORK/<step>.json now: a step killed by its time limit keeps the sizes it finished."""
    from recapfast.io.atomic import write_text

    write_text(work / f"{step}.json", json.dumps(result, indent=1) + "\n")


def step_sweep(plan: dict, device: str, work: Path) -> dict:
    model, info = common.get_model(None, device)
    cont = _contenders(SWEEP_CONTENDERS)
    avail = [c for c in cont if c.available]
    threads = torch.get_num_threads()
    out = {"model": info, "contenders": _described(cont), "eps": list(eval_sweep.EPS), "sizes": []}
    fns = {c.name: peers.make_batch_fn(c, model, eval_sweep.EPS, eval_sweep.ATTACKS, threads=threads) for c in avail}
    for size in plan["sizes"]:
        root = synth_folder(size, plan["counts"][size] // 2)
        x_all, y_all = load_folder(root, size)
        x_all, y_all = x_all.to(device), y_all.to(device)
        bs = plan["batch"][size]
        batches = [(x_all[i:i + bs], y_all[i:i + bs]) for i in range(0, x_all.shape[0], bs)]
        images = int(x_all.shape[0])
        entry = {"size": size, "images": images, "batch_size": bs, "modes": {}}
        outcomes: dict = {}
        warm = {n: (lambda f=f: f(*batches[0])) for n, f in fns.items()}
        passes = {n: (lambda f=f, n=n: outcomes.__setitem__(n, eval_sweep._collect(f, batches)))
                  for n, f in fns.items()}
        log(f"gpu sweep {size}px model-only on {device}: {len(passes)} contenders x {plan['reps']} reps, "
            f"{images} images")
        entry["modes"]["model-only"] = _wall_rows(alternate(passes, plan["reps"], device, warmup=warm), images)
        e2e = {c.name: (eval_sweep._recapfast_eval(model, c, root, size, bs, 0, threads)
                        if c.name.startswith("recapfast")
                        else eval_sweep._streamed(_on(fns[c.name], device), root, size, bs, 0)) for c in avail}
        log(f"gpu sweep {size}px end-to-end on {device}")
        entry["modes"]["end-to-end"] = _wall_rows(alternate(e2e, plan["reps"], device), images)
        if outcomes:
            reference = "recapfast-torch" if "recapfast-torch" in outcomes else next(iter(outcomes))
            entry["agreement_reference"] = reference
            entry["agreement"] = eval_sweep.agreement(outcomes, reference)
        out["sizes"].append(entry)
        _save(work, "sweep", {**out, "partial": True})
    return out


def step_kernels(plan: dict, device: str) -> dict:
    """Every extension op vs its reference on the device (the profile behind the sweep's numbers)."""
    from recapfast import ops

    from ..kernels import cases, fastpath_cases, timeit_pair

    backend = "torch" if _torch_only() or _ext_problem() else "ext"
    rows = []
    with contender_settings(backend, torch.get_num_threads()):
        for size in plan["sizes"]:
            batch = plan["kernel_batch"][size]
            both = list(fastpath_cases(size, batch, device))
            if backend == "ext":
                both = list(cases(size, batch, device)) + both
            for name, ext_fn, ref_fn in both:
                t_ext, t_ref = timeit_pair(ext_fn, ref_fn, max(plan["reps"], 3), device)
                rows.append({"op": name, "size": size, "batch": batch, "ext_ms": round(t_ext * 1e3, 3),
                             "torch_ms": round(t_ref * 1e3, 3), "speedup": round(t_ref / t_ext, 2)})
                log(f"gpu kernels {name:34s} {size:4d}px ext {t_ext * 1e3:8.3f} ms  torch {t_ref * 1e3:8.3f} ms")
        active = ops.active_backend()
    return {"backend": active, "rows": rows}


def _cli(args: list[str], log: Path) -> float:
    """Wall seconds of one `python -m recapfast ...` run; its output goes to ``log``."""
    from recapfast.io.atomic import write_text

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recapfast", *args], capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 3)
    write_text(log, f"$ recapfast {' '.join(args)}\n{done.stdout}{done.stderr}")
    if done.returncode:
        raise RuntimeError(f"recapfast {args[0]} exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return seconds


def auto_hooks(plan: dict, device: str) -> dict:
    """The bench's `auto` workloads (AUTO_WORKLOADS) that this tree has, each run on ``device``; the others
    recorded as absent, a failing one with its error."""
    out = {}
    for name in AUTO_WORKLOADS:
        if importlib.util.find_spec(name) is None:
            out[name] = "absent: this tree's bench has no auto workload (issue 23 adds it)"
            continue
        model, _ = common.get_model(None, device)
        try:
            out[name] = importlib.import_module(name).run(
                model, _contenders(SWEEP_CONTENDERS), plan["sizes"], plan["auto_counts"], plan["batch"], plan["reps"],
                device=device)
        except Exception as err:  # noqa: BLE001 - a hook of another API must not cost the other timings
            out[name] = f"failed: {type(err).__name__}: {err}"
            log(f"gpu auto: the {name} hook failed: {err}")
    return out


def step_auto(plan: dict, device: str, work: Path) -> dict:
    out: dict = {"cli": [], "hooks": {}}
    for size in plan["sizes"]:
        root = synth_folder(size, plan["auto_counts"][size] // 2, seed=77)
        options = ["--attack", "auto", "--size", str(size), "--device", device,
                   "--batch-size", str(plan["batch"][size]), *plan["auto_args"]]
        seconds = _cli(["eval", str(root), *options, "--quiet", "--force", "--json", str(work / f"auto-{size}.json")],
                       work / f"auto-{size}.log")
        result = json.loads((work / f"auto-{size}.json").read_text())
        out["cli"].append({"size": size, "images": plan["auto_counts"][size], "wall_s": seconds, "options": options,
                           "result": result})
        log(f"gpu auto {size}px: recapfast eval --attack auto {seconds:.2f} s")
        _save(work, "auto", {**out, "partial": True})
    out["hooks"] = auto_hooks(plan, device)
    return out


def _in_settings(step) -> None:
    with contender_settings(_auto_backend(), torch.get_num_threads()):
        step()


def step_train(plan: dict, device: str) -> dict:
    t = plan["train"]
    model, _ = common.get_model(None, device)
    x, y = load_folder(synth_folder(t["size"], t["count"]), t["size"])
    x, y = x.to(device), y.to(device)
    steps = {}
    for mode in train_step.MODES:
        step = train_step._stepper(model, mode, x, y, t["batch"])[1]
        steps[mode] = (lambda step=step: _in_settings(step))
    times = alternate(steps, t["reps"], device)
    rows = [{"mode": m, "wall_ms_per_step": round(1e3 * summary(ts)["wall_s"], 2), "wall_ms_all":
             [round(1e3 * v, 2) for v in ts["wall"]]} for m, ts in times.items()]
    for row in rows:
        log(f"gpu train {row['mode']:13s} {row['wall_ms_per_step']:8.2f} ms/step")
    return {**t, "backend": _auto_backend(), "rows": rows}


def step_screen(plan: dict, device: str, work: Path) -> dict:
    s = plan["screen"]
    root = synth_folder(s["size"], s["count"] // 2, seed=31)
    rows = {}
    for name, probe in (("no-probe", "none"), ("probe-eps-1..5", "1,2,3,4,5")):
        args = ["screen", str(root), "-o", str(work / f"screen-{name}.jsonl"), "--size", str(s["tile"]),
                "--probe-eps", probe, "--device", device, "--quiet", "--force"]
        rows[name] = {"wall_s": _cli(args, work / f"screen-{name}.log")}
        records = (work / f"screen-{name}.jsonl").read_text().splitlines()
        rows[name]["records"] = len([r for r in records if r.strip()])
        log(f"gpu screen {name}: {rows[name]['wall_s']:.2f} s for {rows[name]['records']} images")
    return {**s, "rows": rows, "note": "wall seconds of the whole CLI process (start-up and model load included)"}


def step_merge(work: Path, out: Path, device: str, dry_run: bool) -> dict:
    from recapfast.io.atomic import write_text

    steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (work / "steps.jsonl").is_file() else []
    results = {"meta": common.machine_meta(device, [torch.get_num_threads()], "dry-run" if dry_run else "gpu"),
               "steps": steps, "workloads": {}}
    for name in STEPS[:-1]:
        part = work / f"{name}.json"
        results["workloads"][name] = json.loads(part.read_text()) if part.is_file() else None
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--work", required=True, help="folder for the steps' JSON and logs")
    parser.add_argument("--out", default=None, help="merge: folder of results.json (default: --work)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (the CPU test of this script)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: bench.gpu: --device cuda but torch sees no GPU", file=sys.stderr)
        return 1
    plan = PLANS["dry" if args.dry_run else "gpu"]
    torch.manual_seed(0)
    if args.step == "merge":
        step_merge(work, Path(args.out or work), args.device, args.dry_run)
        return 0
    run = {"data": lambda: step_data(plan, args.device), "sweep": lambda: step_sweep(plan, args.device, work),
           "kernels": lambda: step_kernels(plan, args.device), "auto": lambda: step_auto(plan, args.device, work),
           "train": lambda: step_train(plan, args.device),
           "screen": lambda: step_screen(plan, args.device, work)}[args.step]
    t0 = time.perf_counter()
    result = run()
    _sync(args.device)
    result["step_seconds"] = round(time.perf_counter() - t0, 1)
    _save(work, args.step, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())

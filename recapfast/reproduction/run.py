"""Reproduce Experiments 1 and 2 of Zhao et al. 2018 (Tables 1-3) with one call.

Per patch size: data (synthesized, or ``data/<size>/{original,recaptured}``), a deterministic
per-class 40/10/50 train/val/test split (materialized as folders of relative symlinks, since
``train`` and ``evaluate_folder`` take folders), Yang's baseline and the robust model (eq. 5-7)
trained with the paper's settings scaled by the flags, and Experiment 1/2 on the test split
(clean accuracy; FGSM and LLCM at eps 1..5), and the worst case of both models under
``recapfast eval --attack auto,llcm`` (FGSM > APGD > Square cascade plus LLCM, default strength) on the
measure stage's test patches, with the eval's gradient-masking checks.  Then ``report.md``, ``results.json``,
plots and a Fig. 2/5-style example grid.

Resumable: every stage (``<size>/data``, ``<size>/split``, ``<size>/baseline``, ``<size>/robust``,
``<size>/eval``, ``<size>/worst``, ``<size>/measure``, ``<size>/figures``) records its completion in
``OUT/state.json`` (written atomically); a rerun skips finished stages, and the training stages continue from their resume state.
Bulky things (images, split folders, checkpoints) live under ``OUT/work/``, which ``OUT/.gitignore``
excludes, so OUT itself stays small enough to commit.

This module is the workflow; its parts live beside it: ``config`` (settings, ``state.json``,
resume), ``paper`` (the paper's numbers and findings (a)-(d)),
``provenance`` (commit, machine, command) and ``report`` (``report.md``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from recapfast.data.folder import CLASS_NAMES, discover
from recapfast.data.splits import SPLIT_FRACTIONS, SPLIT_NAMES, data_manifest, materialize_split, split_samples
from recapfast.io import atomic
from recapfast.reproduction.paper import (ATTACKS, CLEAN_DROP_MAX, EPS, GRID_EPS, LOSS_FRACTION, MODELS, PAPER_ADVERSARIAL,
                                       PAPER_CLEAN, RECOVERY_MIN, TIE_TOLERANCE, WORST_ATTACKS, findings,
                                       worst_finding)
from recapfast.reproduction.provenance import cli_command, git_commit, machine_info
from recapfast.reproduction.config import ReproduceConfig, ReproduceError, RunState, prepare_out, write_json_atomic
from recapfast.reproduction.report import render_report


@dataclass
class ReproduceResult:
    out: Path
    report: Path
    results: Path
    results_data: dict = field(default_factory=dict)
    ran: list = field(default_factory=list)       # stages run in this call
    skipped: list = field(default_factory=list)   # stages already finished


def _train_model(train_dir: Path, val_dir: Path, ckpt: Path, config, device, log):
    """Train one model; continues from the resume state when a killed run left one."""
    from recapfast.training.train import resume_path, train

    resume = resume_path(ckpt).is_file()
    if not resume:
        for p in (ckpt, ckpt.with_suffix(".json")):
            p.unlink(missing_ok=True)
    return train(train_dir, ckpt, config, val_dir=val_dir, device=device, resume=resume, log=log)


def _use_model(source: str, ckpt: Path) -> dict:
    """--models: the training stage copies a given checkpoint (+ JSON) instead of training one."""
    from recapfast.models.checkpoint import config_path, read_config, resolve

    src = resolve(source)
    with open(src, "rb") as fh:
        weights = fh.read()
    with open(config_path(src), "rb") as fh:
        config = fh.read()
    meta = read_config(src)
    atomic.write_file(ckpt, weights, mkdir=True)
    atomic.write_file(ckpt.with_suffix(".json"), config)
    digest = hashlib.sha256(weights).hexdigest()
    return {"iterations": (meta.get("metrics") or {}).get("iteration", 0), "trained_here": False,
            "source": source, "sha256": digest, "best": meta.get("metrics") or {},
            "settings": meta.get("training") or {}}


def _eval_summary(res) -> dict:
    d = {"clean_accuracy": res.clean_accuracy, "clean_accuracy_per_class": res.clean_accuracy_per_class,
         "patches": res.patches, "patches_per_class": res.patches_per_class, "errors": len(res.errors),
         "seconds": res.seconds}
    for a in res.attacks:
        d[a] = {"accuracy": [res.cell(a, e).accuracy for e in res.eps],
                "success_rate": [res.cell(a, e).success_rate for e in res.eps],
                "mean_psnr": [res.cell(a, e).mean_psnr for e in res.eps],
                "mean_ssim": [res.cell(a, e).mean_ssim for e in res.eps]}
    return d


def presplit_parts(data_root: Path) -> dict | None:
    """{split: samples} when ``data_root`` is already split (``<root>/{train,val,test}/{original,recaptured}``, as
    synthesis from photos writes it: split by source photo); None for a plain labelled folder (split here)."""
    root = Path(data_root)
    if not all((root / n).is_dir() for n in SPLIT_NAMES) or any((root / c).is_dir() for c in CLASS_NAMES):
        return None
    return {n: discover(root / n) for n in SPLIT_NAMES}


def measure_patches(test_dir: Path, size: int, cap: int):
    """Up to ``cap`` test patches (center crops), the first cap/2 of each class in sorted path order."""
    import torch

    from recapfast.data.folder import PatchDataset

    samples = discover(test_dir)
    picks = []
    for c in range(len(CLASS_NAMES)):
        picks += [s for s in samples if s.label == c][:max(1, cap // 2)]
    ds = PatchDataset(picks, size)
    items = [ds[i] for i in range(len(picks))]
    return (torch.cat([it.patches for it in items if it.patches is not None]),
            torch.tensor([it.label for it in items if it.patches is not None]))


def subset_cap(size: int, cap: int) -> int:
    """The test patches the measure and worst stages use at ``size``: ``cap`` at 64 px, scaled with the pixel
    count (an attack at 512 px costs 64x one at 64 px), at least 16."""
    return max(16, int(cap * (64 / size) ** 2))


def worst_trust():
    """The worst stage's attack settings: ``recapfast eval --attack auto``'s defaults (APGD-CE 100 steps, Square
    1000 queries, one restart each, seed 0); the stage records them, and the report prints them."""
    from recapfast.engine.trust import TrustConfig

    return TrustConfig(cascade=True)


def worst_case(model, x, y, eps: Sequence[float] = EPS, batch_size: int = 64) -> dict:
    """``recapfast eval --attack auto,llcm`` (the default APGD and Square settings) on uint8 patches x [N, 3, S, S]:
    the cascade FGSM > APGD > Square plus LLCM, the worst case (correct clean and under every attack at that eps)
    and the eval's gradient-masking checks, on these patches only."""
    from recapfast.engine.evaluate import Evaluator

    t0 = time.perf_counter()
    ev = Evaluator(model, eps, WORST_ATTACKS, trust=worst_trust())
    for i in range(0, int(x.shape[0]), batch_size):
        ev.update(x[i:i + batch_size], y[i:i + batch_size])
    res = ev.result()
    wc = res.worst_case
    return {"patches": res.patches, "patches_per_class": res.patches_per_class, "clean": res.clean_accuracy,
            **{a: [res.cell(a, e).accuracy for e in res.eps] for a in res.attacks},
            "worst": [c["accuracy"] for c in wc["cells"]], "worst_correct": [c["correct"] for c in wc["cells"]],
            "cascade": wc.get("cascade"), "masking": res.masking, "attack_settings": res.attack_settings,
            "seconds": round(time.perf_counter() - t0, 3)}


def grid_examples(models: dict, test_dir: Path, size: int, eps: Sequence[float] = GRID_EPS, device="cpu") -> dict:
    """Clean and FGSM/LLCM images of the first original and first recaptured test patch, per model,
    with each image's predicted label and probability (what plots.example_grid draws)."""
    import torch

    from recapfast.attacks.single_step import eval_mode, sweep
    from recapfast.data.folder import PatchDataset

    samples = discover(test_dir)
    picks = [next(s for s in samples if s.label == c) for c in range(len(CLASS_NAMES))]
    ds = PatchDataset(picks, size)
    x = torch.cat([ds[i].patches for i in range(len(picks))])          # uint8 [2, 3, S, S]
    y = torch.tensor([s.label for s in picks])
    out = {"files": [f"{CLASS_NAMES[s.label]}/{os.path.basename(os.path.realpath(s.path))}" for s in picks], "labels": y.tolist(),
           "eps": [float(e) for e in eps], "clean": x.numpy(), "models": {}}
    for name, model in models.items():
        res = sweep(model, x.to(device), y.to(device), eps, ATTACKS, quantize=True, return_images=True)
        entry = {}
        with eval_mode(model), torch.inference_mode():
            p = torch.softmax(model(x.to(device).float()), 1).cpu()
            entry["clean"] = {"pred": p.argmax(1).tolist(), "prob": p.max(1).values.tolist()}
            for a in ATTACKS:
                imgs = res.images[a].cpu()                          # [E, B, 3, H, W]
                pa = torch.softmax(model(imgs.flatten(0, 1).to(device).float()), 1).cpu()
                pa = pa.view(len(eps), len(picks), -1)
                entry[a] = {"images": imgs.round().clamp(0, 255).to(torch.uint8).numpy(),
                            "pred": pa.argmax(-1).tolist(), "prob": pa.max(-1).values.tolist()}
        out["models"][name] = entry
    return out


def reproduce(
    out,
    config: ReproduceConfig,
    device="cpu",
    force: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    stop_after: str | None = None,
    notes: str | None = None,
) -> ReproduceResult:
    """Run (or resume) the reproduction into ``out``; returns the paths of report.md and results.json.

    ``stop_after``: a stage name (e.g. "64/baseline"); the run stops after finishing it, as if killed
    there (for tests and for splitting a long run over several sessions).
    ``notes``: markdown shown in the report under "Why these settings" (kept across resumed calls).
    """
    import torch

    config.validate()
    from recapfast.reporting.plots import _pyplot

    _pyplot()      # the figures stage needs matplotlib: fail before the first stage, not after hours
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    if config.data is not None:
        for size in config.sizes:
            root = Path(config.data) / str(size)
            if not root.is_dir():
                raise ReproduceError(f"--data {config.data}: has no {size}/ folder (expected DIR/<size>/original and "
                                     f"DIR/<size>/recaptured)")
    state = prepare_out(out, config, force)
    if "started" not in state.data or notes is not None:
        state.data.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if notes is not None:
            state.data["notes"] = notes
        state.save()
    device = torch.device(device)
    work = out / "work"
    result = ReproduceResult(out, out / "report.md", out / "results.json")

    def stage(name: str, fn: Callable[[], dict]) -> bool:
        """Run a stage unless finished; returns True when the run must stop here."""
        if state.done(name):
            result.skipped.append(name)
            log(f"reproduce: {name}: done already, skipped")
        else:
            log(f"reproduce: {name}: running")
            t0 = time.perf_counter()
            info = fn() or {}
            state.record(name, time.perf_counter() - t0, **info)
            result.ran.append(name)
            log(f"reproduce: {name}: finished in {state.get(name)['seconds']:.1f} s")
        return stop_after == name

    data_steps, model_steps = [], []
    for size in config.sizes:
        sdir = work / str(size)
        data_root = Path(config.data) / str(size) if config.data else sdir / "data"
        split_root = sdir / "split"
        ckpts = {m: sdir / f"{m}.safetensors" for m in MODELS}

        def do_data(size=size, sdir=sdir, data_root=data_root) -> dict:
            if config.data is None:
                from recapfast.data.synth_sets import synthesize

                if data_root.exists():
                    shutil.rmtree(data_root)     # a partial synthesis from a killed run
                scene_args = ({} if config.scenes is None else
                              {"scenes_dir": list(config.scenes), "split": SPLIT_FRACTIONS, "procedural": 0.0})
                man = synthesize(data_root, size=size, count=config.count_for(size), seed=config.seed + size,
                                 workers=workers, generator=config.generator, **scene_args)
                source = {"synthesized": True, "synth_seed": config.seed + size, "generator": man["generator"]}
                if config.scenes is not None:
                    source["scenes"] = {"photos": man["scenes"]["photos"], "skipped": man["scenes"]["skipped"],
                                        "split_photos": {k: v["photos"] for k, v in man["splits"].items()}}
            else:
                source = {"synthesized": False, "folder": str(data_root)}
            presplit = presplit_parts(data_root)
            samples = discover(data_root) if presplit is None else [s for v in presplit.values() for s in v]
            man = data_manifest(samples, data_root)
            if min(man["per_class"]) < 10:
                raise ReproduceError(f"{data_root}: needs at least 10 images of each class, found {man['per_class']}")
            return {**source, "manifest": man, "presplit": presplit is not None}

        def do_split(size=size, data_root=data_root, split_root=split_root) -> dict:
            parts = presplit_parts(data_root)
            presplit = parts is not None
            if not presplit:
                parts = split_samples(discover(data_root), config.seed)
            materialize_split(parts, data_root, split_root, presplit=presplit)
            tiles = None
            if config.train_tile and config.train_tile < size:
                from recapfast.data.tiles import materialize_tiles

                tiles = materialize_tiles(parts, data_root, split_root, config.train_tile, presplit=presplit)
            lists = {k: sorted(os.path.relpath(s.path, data_root) for s in v) for k, v in parts.items()}
            write_json_atomic(split_root.parent / "split.json", lists)
            digest = hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()
            return {"counts": {k: [sum(1 for s in v if s.label == c) for c in range(2)] for k, v in parts.items()},
                    "split_sha256": digest, "train_tiles": tiles}

        def do_train(model_name: str, size=size, split_root=split_root, ckpts=ckpts) -> dict:
            if config.models:
                return _use_model(config.models[MODELS.index(model_name)], ckpts[model_name])
            cfg = config.train_config(size, robust=model_name == "robust")
            res = _train_model(split_root / "train", split_root / "val", ckpts[model_name], cfg, device, log)
            return {"iterations": res.iterations, "best": res.best, "train_seconds_last_session": res.seconds,
                    "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}}

        def do_eval(size=size, split_root=split_root, ckpts=ckpts) -> dict:
            from recapfast.models.checkpoint import load_model
            from recapfast.engine.evaluate import evaluate_folder

            evals = {}
            for m in MODELS:
                model = load_model(ckpts[m], device=device).eval()
                res = evaluate_folder(model, split_root / "test", eps=EPS, attacks=ATTACKS, size=size,
                                      batch_size=config.eval_batch, model_name=m, on_error=None)
                evals[m] = _eval_summary(res)
            return {"results": evals}

        def do_measure(size=size, split_root=split_root, ckpts=ckpts) -> dict:
            from recapfast.models.checkpoint import load_model
            from recapfast.engine.flipdist import measure

            # the cap scales with the pixel count (BIM at 512 px costs 64x 64 px), at least 16 patches
            x, y = measure_patches(split_root / "test", size, subset_cap(size, config.measure_patches))
            return {m: measure(load_model(ckpts[m], device=device).eval(), x.to(device), y.to(device))
                    for m in MODELS}

        def do_worst(size=size, split_root=split_root, ckpts=ckpts) -> dict:
            from recapfast.models.checkpoint import load_model

            # the measure stage's patches: its cap bounds the cost of APGD and Square (full strength) per size
            x, y = measure_patches(split_root / "test", size, subset_cap(size, config.measure_patches))
            models = {m: worst_case(load_model(ckpts[m], device=device).eval(), x.to(device), y.to(device), EPS,
                                    config.eval_batch) for m in MODELS}
            return {"patches": int(x.shape[0]), "cap": subset_cap(size, config.measure_patches),
                    "attacks": list(WORST_ATTACKS), "models": models}

        def do_figures(size=size, split_root=split_root, ckpts=ckpts) -> dict:
            from recapfast.reporting import plots
            from recapfast.models.checkpoint import load_model

            ev = state.get(f"{size}/eval")["results"]
            worst = state.get(f"{size}/worst") if state.done(f"{size}/worst") else None
            plot_dir = out / "plots"
            curve = plots.accuracy_vs_eps(size, ev, PAPER_CLEAN, PAPER_ADVERSARIAL, EPS,
                                          plot_dir / f"accuracy_vs_eps_{size}.png", worst=worst)
            models = {m: load_model(ckpts[m], device=device).eval() for m in MODELS}
            ex = grid_examples(models, split_root / "test", size, GRID_EPS, device)
            grid = plots.example_grid(ex, size, plot_dir / f"examples_{size}.png")
            return {"plots": [os.path.relpath(curve, out), os.path.relpath(grid, out)], "grid_files": ex["files"]}

        data_steps += [(f"{size}/data", do_data), (f"{size}/split", do_split)]
        model_steps += [(f"{size}/baseline", lambda f=do_train: f("baseline")),
                        (f"{size}/robust", lambda f=do_train: f("robust")),
                        (f"{size}/eval", do_eval), (f"{size}/worst", do_worst), (f"{size}/measure", do_measure),
                        (f"{size}/figures", do_figures)]
    for name, fn in data_steps + model_steps:      # every size's data first, then the models
        if stage(name, fn):
            log(f"reproduce: stopped after {name} (rerun the same command to continue)")
            return result
    data = collect_results(state, device)
    write_json_atomic(result.results, data)
    text = render_report(data)
    atomic.write_text(result.report, text)
    result.results_data = data
    log(f"reproduce: wrote {result.report} and {result.results}")
    return result



def collect_results(state: RunState, device) -> dict:
    """results.json: settings, environment, per-size Table 1-3 numbers, findings, stage times."""
    cfg = state.data["config"]
    sizes = {}
    for size in cfg["sizes"]:
        ev = state.get(f"{size}/eval")["results"]
        numbers = {m: {"clean": ev[m]["clean_accuracy"], **{a: ev[m][a]["accuracy"] for a in ATTACKS}} for m in MODELS}
        fs = findings(numbers, measured=state.get(f"{size}/measure"))
        worst = dict(state.get(f"{size}/worst")) if state.done(f"{size}/worst") else None
        if worst is not None:
            worst["finding"] = worst_finding(worst, EPS, c_holds=fs["c"]["holds"])
        sizes[str(size)] = {
            "data": state.get(f"{size}/data"), "split": state.get(f"{size}/split"),
            "training": {m: {k: v for k, v in state.get(f"{size}/{m}").items()} for m in MODELS},
            "evaluation": ev, "numbers": numbers, "measured": state.get(f"{size}/measure"),
            "findings": fs, "worst": worst,
            "figures": state.get(f"{size}/figures")["plots"],
            "grid_files": state.get(f"{size}/figures").get("grid_files"),
        }
    stages = {k: {"seconds": v["seconds"], "finished_at": v["finished_at"]} for k, v in state.data["stages"].items()}
    return {
        "paper": "Zhao, Yang, Ni, Zhao & Wu, Security Consideration for Deep Learning-Based Image Forensics, "
                 "IEICE 2018 (arXiv 1803.11157), section 4, Tables 1-3",
        "config": cfg, "eps": list(EPS), "grid_eps": list(GRID_EPS),
        "paper_tables": {"clean": {m: {str(k): v for k, v in PAPER_CLEAN[m].items()} for m in MODELS},
                         "adversarial": {m: {str(k): v for k, v in PAPER_ADVERSARIAL[m].items()} for m in MODELS}},
        "sizes": sizes, "stages": stages, "total_stage_seconds": round(sum(v["seconds"] for v in stages.values()), 1),
        "notes": state.data.get("notes"), "started": state.data.get("started"), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_commit(), "machine": machine_info(str(device)),
        "command": cli_command(),
        "rules": {"loss_fraction": LOSS_FRACTION, "tie_tolerance": TIE_TOLERANCE, "clean_drop_max": CLEAN_DROP_MAX,
                  "recovery_min": RECOVERY_MIN},
    }


__all__ = ["ReproduceResult", "reproduce", "collect_results", "grid_examples", "measure_patches", "subset_cap",
           "worst_case"]

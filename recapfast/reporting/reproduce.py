"""Reproduce Experiments 1 and 2 of Zhao et al. 2018 (Tables 1-3) with one call.

Per patch size: data (synthesized, or ``data/<size>/{original,recaptured}``), a deterministic
per-class 40/10/50 train/val/test split (materialized as folders of relative symlinks, since
``train`` and ``evaluate_folder`` take folders), Yang's baseline and the robust model (eq. 5-7)
trained with the paper's settings scaled by the flags, and Experiment 1/2 on the test split
(clean accuracy; FGSM and LLCM at eps 1..5).  Then ``report.md``, ``results.json``, plots and
a Fig. 2/5-style example grid.

Resumable: every stage (``<size>/data``, ``<size>/split``, ``<size>/baseline``, ``<size>/robust``,
``<size>/eval``, ``<size>/figures``) records its completion in ``OUT/state.json`` (written atomically);
a rerun skips finished stages, and the training stages continue from their resume state.
Bulky things (images, split folders, checkpoints) live under ``OUT/work/``, which ``OUT/.gitignore``
excludes, so OUT itself stays small enough to commit.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from recapfast.io import atomic
from recapfast.data.folder import CLASS_NAMES, DataError, Sample, discover
from recapfast.data.splits import SPLIT_NAMES, data_manifest, split_counts, split_samples  # noqa: F401 (re-exported)
from recapfast.models.laplacian import DEFAULT_WIDTHS

STATE_VERSION = 1
EPS = (1.0, 2.0, 3.0, 4.0, 5.0)
GRID_EPS = (1.0, 5.0, 10.0, 15.0)
ATTACKS = ("fgsm", "llcm")
MODELS = ("baseline", "robust")
MODEL_TITLES = {"baseline": "Yang", "robust": "Prop"}
PAPER_SIZES = (64, 128, 256, 512)

# Zhao et al. 2018, Tables 1-3 (fractions).  The paper labels the LLCM rows "TGSM".
PAPER_CLEAN = {
    "baseline": {64: 0.967, 128: 0.982, 256: 0.991, 512: 0.994},
    "robust": {64: 0.966, 128: 0.981, 256: 0.985, 512: 0.990},
}
PAPER_ADVERSARIAL = {
    "baseline": {
        64: {"fgsm": [0.028, 0.009, 0.005, 0.006, 0.026], "llcm": [0.075, 0.057, 0.052, 0.053, 0.069]},
        128: {"fgsm": [0.011, 0.002, 0.014, 0.049, 0.065], "llcm": [0.029, 0.020, 0.031, 0.061, 0.075]},
        256: {"fgsm": [0.026, 0.036, 0.054, 0.075, 0.099], "llcm": [0.039, 0.049, 0.066, 0.086, 0.111]},
        512: {"fgsm": [0.033, 0.016, 0.009, 0.007, 0.010], "llcm": [0.046, 0.028, 0.022, 0.019, 0.021]},
    },
    "robust": {
        64: {"fgsm": [0.936, 0.945, 0.961, 0.963, 0.959], "llcm": [0.900, 0.916, 0.930, 0.933, 0.930]},
        128: {"fgsm": [0.959, 0.971, 0.978, 0.984, 0.987], "llcm": [0.945, 0.956, 0.962, 0.968, 0.971]},
        256: {"fgsm": [0.974, 0.985, 0.988, 0.989, 0.986], "llcm": [0.943, 0.951, 0.953, 0.954, 0.952]},
        512: {"fgsm": [0.992, 0.993, 0.993, 0.994, 0.993], "llcm": [0.981, 0.982, 0.983, 0.983, 0.982]},
    },
}

# Rules of the findings (fractions; stated verbatim in the report).
LOSS_FRACTION = 0.5        # (a) adversarial accuracy <= this x clean accuracy
TIE_TOLERANCE = 0.01       # (b), (d) comparisons tolerate 1 point of sampling noise
CLEAN_DROP_MAX = 0.03      # (c) robust clean accuracy >= baseline clean - 3 points
RECOVERY_MIN = 0.5         # (c) robust closes >= half of the gap the attack opened on the baseline


class ReproduceError(DataError):
    """A reproduce argument or output folder that cannot be used."""


@dataclass
class ReproduceConfig:
    sizes: tuple = PAPER_SIZES
    count: int | tuple = 10_000         # originals and recaptures per size (each); or one count per size
    iters: int = 100_000
    batch_size: int = 64
    lr: float = 1e-4
    lr_decay: float = 0.9
    lr_step: int | None = None          # default iters // 10 (the paper's 10k of 100k)
    penalty: float = 10.0
    adv_count: int = 32
    adv_weight: float = 0.2
    val_every: int | None = None        # default iters // 10
    seed: int = 0
    data: str | None = None             # DIR/<size>/{original,recaptured}; None = synthesize
    widths: tuple = DEFAULT_WIDTHS
    eval_batch: int = 64
    train_tile: int | None = None       # train/validate on tiles of this size (repro_tiles); None: whole images
    generator: str = "v3"               # synthesis generator (recapfast.data.synth_sets)
    measure_patches: int = 256          # test patches per model for the measured quantities (flipdist)
    models: tuple | None = None         # (baseline, robust) checkpoints to evaluate instead of training

    def __post_init__(self):
        self.sizes = tuple(int(s) for s in self.sizes)
        if self.models is not None:
            self.models = tuple(str(m) for m in self.models)
        if isinstance(self.count, (list, tuple)):
            self.count = tuple(int(c) for c in self.count)
            if len(self.count) == 1:
                self.count = self.count[0]
        self.widths = tuple(int(w) for w in self.widths)
        if self.lr_step is None:
            self.lr_step = max(1, self.iters // 10)
        if self.val_every is None:
            self.val_every = max(1, self.iters // 10)
        if self.data is not None:
            self.data = str(Path(self.data).resolve())

    def validate(self) -> None:
        per_size_ok = not isinstance(self.count, tuple) or len(self.count) == len(self.sizes)
        checks = [
            (len(self.sizes) > 0 and min(self.sizes) >= 8, f"--sizes must be patch sizes >= 8, got {self.sizes}"),
            (len(set(self.sizes)) == len(self.sizes), f"--sizes has duplicates: {self.sizes}"),
            (per_size_ok, f"--count: give one count or one per size ({len(self.sizes)} sizes), got {self.count}"),
            (self.data is not None or not per_size_ok or min(self.count_for(s) for s in self.sizes) >= 10,
             f"--count must be >= 10 (each split needs both classes), got {self.count}"),
            (self.train_tile is None or (8 <= self.train_tile <= min(self.sizes)),
             f"--train-tile must be between 8 and the smallest size, got {self.train_tile}"),
            (self.generator in ("v2", "v3"), f"--generator must be v2 or v3, got {self.generator!r}"),
            (self.models is None or len(self.models) == 2, f"--models: give BASELINE,ROBUST, got {self.models}"),
            (self.iters >= 1, f"--iters must be >= 1, got {self.iters}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ReproduceError(message)

    def count_for(self, size: int) -> int:
        if isinstance(self.count, tuple):
            return self.count[self.sizes.index(size)]
        return int(self.count)

    def train_config(self, size: int, robust: bool):
        from recapfast.training.train import TrainConfig

        return TrainConfig(iters=self.iters, batch_size=self.batch_size, lr=self.lr, lr_decay=self.lr_decay,
                           lr_step=self.lr_step, robust=robust, penalty=self.penalty, adv_count=self.adv_count,
                           adv_weight=self.adv_weight, val_every=self.val_every, size=self.train_tile or size,
                           seed=self.seed, widths=self.widths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"], d["widths"] = list(self.sizes), list(self.widths)
        if isinstance(self.count, tuple):
            d["count"] = list(self.count)
        if self.models is not None:
            d["models"] = list(self.models)
        return d


# ------------------------------------------------------------------------------------------
# state
# ------------------------------------------------------------------------------------------

def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, obj, indent=1, allow_nan=True)


class RunState:
    """OUT/state.json: the config of the run and one record per finished stage."""

    def __init__(self, out: Path, config: ReproduceConfig):
        self.path = out / "state.json"
        self.data = {"version": STATE_VERSION, "config": config.to_dict(), "stages": {}}

    def load(self) -> None:
        with open(self.path) as fh:
            self.data = json.load(fh)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def record(self, stage: str, seconds: float, **info) -> None:
        self.data["stages"][stage] = {"seconds": round(seconds, 3),
                                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        self.save()

    def get(self, stage: str) -> dict:
        return self.data["stages"][stage]


_OWNED = ("state.json", "report.md", "results.json", "plots", "work", ".gitignore")
_COMPARED = ("sizes", "count", "iters", "batch_size", "lr", "lr_decay", "lr_step", "penalty", "adv_count",
             "adv_weight", "val_every", "seed", "data", "widths", "train_tile", "generator", "measure_patches",
             "models")


def prepare_out(out: Path, config: ReproduceConfig, force: bool) -> RunState:
    """Open OUT: resume a run with the same settings, start a new one in an empty/new folder, or refuse."""
    state = RunState(out, config)
    if out.exists() and not out.is_dir():
        raise ReproduceError(f"{out}: exists and is not a folder")
    if force and out.is_dir():
        for name in _OWNED:   # only what a reproduce run writes; nothing else in OUT is touched
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    if state.path.is_file():
        try:
            old = RunState(out, config)
            old.load()
        except (OSError, ValueError) as err:
            raise ReproduceError(f"{state.path}: unreadable ({err}); use --force to start over") from err
        saved = old.data.get("config", {})
        new = config.to_dict()
        differ = [k for k in _COMPARED if saved.get(k) != new.get(k)]
        if differ:
            raise ReproduceError(f"{out}: holds a reproduction made with other settings ({', '.join(differ)}); "
                                 f"use the same settings to resume, --force to start over, or a new OUT")
        return old
    if not force and out.is_dir() and any(p.name != ".gitignore" for p in out.iterdir()):
        raise ReproduceError(f"{out}: is not empty and holds no reproduction state (use --force to write into it, "
                             f"or choose a new OUT)")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / ".gitignore", "# datasets, split folders and checkpoints of `recapfast reproduce`\nwork/\n")
    state.save()
    return state


# ------------------------------------------------------------------------------------------
# data and split
# ------------------------------------------------------------------------------------------

def _link_name(sample: Sample, root: Path) -> str:
    rel = os.path.relpath(sample.path, root / CLASS_NAMES[sample.label])
    return rel.replace(os.sep, "__")


def materialize_split(parts: dict[str, list[Sample]], data_root: Path, split_root: Path) -> None:
    """split_root/<part>/<class>/<file> as relative symlinks to the data (no image copies)."""
    if split_root.exists():
        shutil.rmtree(split_root)        # a half-written split from a killed run
    for name, samples in parts.items():
        for c in CLASS_NAMES:
            (split_root / name / c).mkdir(parents=True, exist_ok=True)
        for s in samples:
            link = split_root / name / CLASS_NAMES[s.label] / _link_name(s, data_root)
            os.symlink(os.path.relpath(os.path.abspath(s.path), link.parent), link)


# ------------------------------------------------------------------------------------------
# findings
# ------------------------------------------------------------------------------------------

def _p(x: float) -> str:
    return f"{100 * x:.1f}%"


def findings(numbers: dict, eps: Sequence[float] = EPS, measured: dict | None = None) -> dict:
    """The paper's qualitative findings (a)-(d) for one size, computed from our numbers.

    ``numbers[model] = {"clean": acc, "fgsm": [acc per eps], "llcm": [...]}`` for model in
    ("baseline", "robust"), accuracies as fractions.  ``measured[model]``: the run's measurements
    (``recapfast.engine.flipdist.measure``); a finding that does not hold gets an ``explanation`` made only of
    those measured quantities (None without measurements).
    Returns {letter: {holds, rule, detail, explanation}}.
    """
    from recapfast.engine.flipdist import agreement_sentence, flip_sentence

    mb = (measured or {}).get("baseline")
    mr = (measured or {}).get("robust")
    b, r = numbers["baseline"], numbers["robust"]
    e = [f"{x:g}" for x in eps]
    out = {}

    # (a) the baseline loses most of its accuracy under both attacks at every eps.
    limit = LOSS_FRACTION * b["clean"]
    worst = max(((b[a][i], a, e[i]) for a in ATTACKS for i in range(len(eps))), key=lambda t: t[0])
    holds = worst[0] <= limit
    out["a"] = {
        "holds": holds,
        "rule": f"every baseline FGSM and LLCM accuracy at eps {e[0]}..{e[-1]} is <= {LOSS_FRACTION:g} x its clean "
                f"accuracy ({_p(b['clean'])} -> limit {_p(limit)})",
        "detail": f"highest adversarial accuracy {_p(worst[0])} ({worst[1].upper()}, eps {worst[2]})",
        "explanation": None if holds or mb is None else (
            f"{flip_sentence(mb)}; {agreement_sentence(mb, e.index(worst[2]))}"),
    }

    # (b) FGSM hurts at least as much as LLCM (baseline).
    gaps = [b["fgsm"][i] - b["llcm"][i] for i in range(len(eps))]
    bad = [e[i] for i, g in enumerate(gaps) if g > TIE_TOLERANCE]
    holds = not bad
    out["b"] = {
        "holds": holds,
        "rule": f"at every eps, baseline FGSM accuracy <= baseline LLCM accuracy + {100 * TIE_TOLERANCE:g} point",
        "detail": f"FGSM - LLCM accuracy per eps: {', '.join(f'{100 * g:+.1f}' for g in gaps)} points "
                  f"(mean {100 * sum(gaps) / len(gaps):+.1f})",
        "explanation": None if holds or mb is None else "; ".join(agreement_sentence(mb, e.index(k)) for k in bad),
    }

    # (c) the robust model keeps clean accuracy and recovers most of the adversarial accuracy.
    drop = b["clean"] - r["clean"]
    recov = []
    for a in ATTACKS:
        for i in range(len(eps)):
            lost = b["clean"] - b[a][i]
            gained = r[a][i] - b[a][i]
            recov.append((gained / lost if lost > 1e-9 else float("nan"), a, e[i]))
    finite = [t for t in recov if not math.isnan(t[0])]
    least = min(finite, key=lambda t: t[0]) if finite else (float("nan"), "-", "-")
    clean_ok = drop <= CLEAN_DROP_MAX
    recov_ok = bool(finite) and least[0] >= RECOVERY_MIN
    holds = clean_ok and recov_ok
    why = [flip_sentence(m) + f" ({name})" for name, m in (("baseline", mb), ("robust", mr)) if m is not None]
    out["c"] = {
        "holds": holds,
        "rule": f"robust clean accuracy >= baseline clean - {100 * CLEAN_DROP_MAX:g} points, and in every (attack, eps) "
                f"cell the robust model closes >= {100 * RECOVERY_MIN:g}% of the gap the attack opened on the "
                f"baseline: (robust_adv - baseline_adv) / (baseline_clean - baseline_adv)",
        "detail": f"clean {_p(r['clean'])} vs {_p(b['clean'])} ({-100 * drop:+.1f} points); recovery min "
                  f"{100 * least[0]:.0f}% ({least[1].upper()}, eps {least[2]}), mean "
                  f"{100 * sum(t[0] for t in finite) / max(len(finite), 1):.0f}%",
        "explanation": "; ".join(why) if why and not holds else None,
    }

    # (d) the robust model resists FGSM better than LLCM (it was trained on FGSM only).
    gaps = [r["fgsm"][i] - r["llcm"][i] for i in range(len(eps))]
    mean_gap = sum(gaps) / len(gaps)
    bad = [e[i] for i, g in enumerate(gaps) if g < -TIE_TOLERANCE]
    holds = not bad and mean_gap > 0
    out["d"] = {
        "holds": holds,
        "rule": f"at every eps, robust FGSM accuracy >= robust LLCM accuracy - {100 * TIE_TOLERANCE:g} point, and "
                f"higher on average over eps",
        "detail": f"FGSM - LLCM accuracy per eps: {', '.join(f'{100 * g:+.1f}' for g in gaps)} points "
                  f"(mean {100 * mean_gap:+.1f})",
        "explanation": None if holds or mr is None else agreement_sentence(mr, gaps.index(min(gaps))),
    }
    return out


# ------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------

def git_commit() -> dict:
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "gpu": None}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        from recapfast import ops

        info["backend"] = ops.active_backend()
    except (ImportError, RuntimeError):
        info["backend"] = os.environ.get("RECAPFAST_BACKEND", "auto")
    return info


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------

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
    from recapfast.io.checkpoint import config_path, read_config, resolve

    src = resolve(source)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, ckpt)
    shutil.copyfile(config_path(src), ckpt.with_suffix(".json"))
    meta = read_config(src)
    with open(src, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
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
                man = synthesize(data_root, size=size, count=config.count_for(size), seed=config.seed + size,
                                 workers=workers, generator=config.generator)
                source = {"synthesized": True, "synth_seed": config.seed + size, "generator": man["generator"]}
            else:
                source = {"synthesized": False, "folder": str(data_root)}
            samples = discover(data_root)
            man = data_manifest(samples, data_root)
            if min(man["per_class"]) < 10:
                raise ReproduceError(f"{data_root}: needs at least 10 images of each class, found {man['per_class']}")
            return {**source, "manifest": man}

        def do_split(size=size, data_root=data_root, split_root=split_root) -> dict:
            parts = split_samples(discover(data_root), config.seed)
            materialize_split(parts, data_root, split_root)
            tiles = None
            if config.train_tile and config.train_tile < size:
                from recapfast.data.tiles import materialize_tiles

                tiles = materialize_tiles(parts, data_root, split_root, config.train_tile)
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
            from recapfast.io.checkpoint import load_model
            from recapfast.engine.evaluate import evaluate_folder

            evals = {}
            for m in MODELS:
                model = load_model(ckpts[m], device=device).eval()
                res = evaluate_folder(model, split_root / "test", eps=EPS, attacks=ATTACKS, size=size,
                                      batch_size=config.eval_batch, model_name=m, on_error=None)
                evals[m] = _eval_summary(res)
            return {"results": evals}

        def do_measure(size=size, split_root=split_root, ckpts=ckpts) -> dict:
            from recapfast.io.checkpoint import load_model
            from recapfast.engine.flipdist import measure

            # the cap scales with the pixel count (BIM at 512 px costs 64x 64 px), at least 16 patches
            x, y = measure_patches(split_root / "test", size, max(16, int(config.measure_patches * (64 / size) ** 2)))
            return {m: measure(load_model(ckpts[m], device=device).eval(), x.to(device), y.to(device))
                    for m in MODELS}

        def do_figures(size=size, split_root=split_root, ckpts=ckpts) -> dict:
            from recapfast.reporting import plots
            from recapfast.io.checkpoint import load_model

            ev = state.get(f"{size}/eval")["results"]
            plot_dir = out / "plots"
            curve = plots.accuracy_vs_eps(size, ev, PAPER_CLEAN, PAPER_ADVERSARIAL, EPS,
                                          plot_dir / f"accuracy_vs_eps_{size}.png")
            models = {m: load_model(ckpts[m], device=device).eval() for m in MODELS}
            ex = grid_examples(models, split_root / "test", size, GRID_EPS, device)
            grid = plots.example_grid(ex, size, plot_dir / f"examples_{size}.png")
            return {"plots": [os.path.relpath(curve, out), os.path.relpath(grid, out)], "grid_files": ex["files"]}

        data_steps += [(f"{size}/data", do_data), (f"{size}/split", do_split)]
        model_steps += [(f"{size}/baseline", lambda f=do_train: f("baseline")),
                        (f"{size}/robust", lambda f=do_train: f("robust")),
                        (f"{size}/eval", do_eval), (f"{size}/measure", do_measure), (f"{size}/figures", do_figures)]
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


def _cli_command() -> str | None:
    """The `recapfast reproduce ...` command line when running under the CLI, else None."""
    import shlex

    if len(sys.argv) > 1 and "reproduce" in sys.argv[1:] and \
            os.path.basename(sys.argv[0]) in ("recapfast", "__main__.py"):
        return "recapfast " + shlex.join(sys.argv[1:])
    return None


def collect_results(state: RunState, device) -> dict:
    """results.json: settings, environment, per-size Table 1-3 numbers, findings, stage times."""
    cfg = state.data["config"]
    sizes = {}
    for size in cfg["sizes"]:
        ev = state.get(f"{size}/eval")["results"]
        numbers = {m: {"clean": ev[m]["clean_accuracy"], **{a: ev[m][a]["accuracy"] for a in ATTACKS}} for m in MODELS}
        sizes[str(size)] = {
            "data": state.get(f"{size}/data"), "split": state.get(f"{size}/split"),
            "training": {m: {k: v for k, v in state.get(f"{size}/{m}").items()} for m in MODELS},
            "evaluation": ev, "numbers": numbers, "measured": state.get(f"{size}/measure"),
            "findings": findings(numbers, measured=state.get(f"{size}/measure")),
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
        "command": _cli_command(),
        "rules": {"loss_fraction": LOSS_FRACTION, "tie_tolerance": TIE_TOLERANCE, "clean_drop_max": CLEAN_DROP_MAX,
                  "recovery_min": RECOVERY_MIN},
    }


__all__ = ["ReproduceConfig", "ReproduceError", "ReproduceResult", "reproduce", "findings", "split_samples",
           "split_counts", "PAPER_CLEAN", "PAPER_ADVERSARIAL"]


# ------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------

def _cell(ours: float | None, paper: float | None) -> str:
    o = "not run" if ours is None else _p(ours)
    return o if paper is None else f"{o} ({_p(paper)})"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
           ["| " + " | ".join(r) + " |" for r in rows]


def render_report(data: dict) -> str:
    """The markdown report of a finished reproduction (from the results.json dict)."""
    cfg, sizes, machine = data["config"], data["sizes"], data["machine"]
    run_sizes = [int(s) for s in sizes]
    all_sizes = sorted(set(PAPER_SIZES) | set(run_sizes))
    eps = data["eps"]
    L = ["# Reproduction of Zhao et al. 2018, Experiments 1 and 2 (Tables 1-3)", ""]
    L += [f"Paper: {data['paper']}.", "",
          "Generated by `recapfast reproduce`; every number below is computed from this run "
          "(`results.json` holds them all).  Each cell reads **ours (paper)**.  The paper labels the LLCM "
          "rows \"TGSM\"; they are LLCM here.", ""]
    gpu = machine.get("gpu")
    L += ["## This run", ""]
    counts = cfg["count"] if isinstance(cfg["count"], list) else [cfg["count"]] * len(run_sizes)
    per_size = ", ".join(f"{c} + {c} at {s}x{s}" for c, s in zip(counts, run_sizes))
    gen = cfg.get("generator", "v2")
    tile = cfg.get("train_tile")
    L += [f"- sizes: {', '.join(f'{s}x{s}' for s in run_sizes)} (paper: 64, 128, 256, 512)",
          f"- images (original + recaptured): {per_size if not cfg['data'] else 'from --data'} "
          f"({f'synthesized by recapfast synth --generator {gen}' if not cfg['data'] else cfg['data']}; "
          f"paper: 10000 + 10000 real photos per size)",
          f"- split: 40/10/50 train/val/test per class, seeded (seed {cfg['seed']})",
          *([f"- models: **not trained by this run**: the given checkpoints {cfg['models']} (64 px; sha256 and "
             f"training settings under Training below) are evaluated at every size"] if cfg.get("models") else []),
          f"- training{' (not used: --models)' if cfg.get('models') else ''}: {cfg['iters']} iterations, batch {cfg['batch_size']}, Adam, lr {cfg['lr']:g} x "
          f"{cfg['lr_decay']:g} every {cfg['lr_step']} iterations (paper: 100k iterations, batch 64, lr 1e-4 x 0.9 "
          f"every 10k); validation every {cfg['val_every']} iterations, the best validation checkpoint is evaluated "
          f"(baseline: clean accuracy; robust: mean of clean and FGSM eps 2 accuracy)",
          f"- robust model (eq. 5-7): lambda {cfg['penalty']:g}, k {cfg['adv_count']} FGSM images per batch of "
          f"{cfg['batch_size']}, alpha {cfg['adv_weight']:g}, eps ~ U[1, 5]",
          f"- model widths {cfg['widths']}; evaluation: center crop, adversarial images quantized to uint8",
          *([f"- tile-based training: for each size above {tile}x{tile} the train and validation images are cut "
             f"into their {tile}x{tile} tiles and the models train and validate on those; the test images are "
             f"evaluated whole (the network ends in global average pooling)"] if tile and not cfg.get("models") else []),
          f"- measured quantities (FGSM/LLCM agreement, BIM-to-flip eps) on up to {cfg.get('measure_patches', 256)} "
          f"x (64/size)^2 (at least 16) test patches per size, half per class",
          f"- device: {machine['device']}" + (f" ({gpu})" if gpu else
                                              " - **no GPU was available: this is not a full-protocol run**"),
          ""]
    if data.get("notes"):
        L += ["### Why these settings", "", data["notes"].strip(), ""]

    # Table 1
    L += ["## Table 1: accuracy of clean images", ""]
    head = ["image size"] + [f"{s}x{s}" for s in all_sizes]
    rows = []
    for m in MODELS:
        row = [MODEL_TITLES[m]]
        for s in all_sizes:
            ours = sizes[str(s)]["numbers"][m]["clean"] if str(s) in sizes else None
            row.append(_cell(ours, PAPER_CLEAN[m].get(s)))
        rows.append(row)
    L += _md_table(head, rows) + [""]

    for number, m, title in ((2, "baseline", "Yang's method"), (3, "robust", "proposed method")):
        L += [f"## Table {number}: detection accuracy of adversarial images, {title}", ""]
        head = ["size", "method"] + [f"eps={e:g}" for e in eps]
        rows = []
        for s in all_sizes:
            for a in ATTACKS:
                ours = sizes[str(s)]["numbers"][m][a] if str(s) in sizes else [None] * len(eps)
                paper = PAPER_ADVERSARIAL[m].get(s, {}).get(a, [None] * len(eps))
                rows.append([f"{s}x{s}" if a == ATTACKS[0] else "", a.upper()] +
                            [_cell(o, p) for o, p in zip(ours, paper)])
        L += _md_table(head, rows) + [""]

    L += ["## Findings", "",
          "The paper's qualitative claims, checked on our numbers with these rules:", ""]
    any_f = next(iter(sizes.values()))["findings"]
    names = {"a": "Yang's model loses most of its accuracy under both attacks at every eps",
             "b": "FGSM hurts at least as much as LLCM",
             "c": "the robust model keeps clean accuracy within a few points and recovers most of the adversarial accuracy",
             "d": "the robust model resists FGSM better than LLCM"}
    for k in "abcd":
        L.append(f"- ({k}) {names[k]}: holds when {any_f[k]['rule']}.")
    L += [""]
    head = ["size"] + [f"({k})" for k in "abcd"]
    rows = [[f"{s}x{s}"] + [("holds" if sizes[str(s)]["findings"][k]["holds"] else "**does not hold**")
                            for k in "abcd"] for s in run_sizes]
    L += _md_table(head, rows) + [""]
    for s in run_sizes:
        L += [f"### {s}x{s}", ""]
        for k in "abcd":
            f = sizes[str(s)]["findings"][k]
            L.append(f"- ({k}) {'holds' if f['holds'] else '**does not hold**'}: {f['detail']}.")
            if f["explanation"]:
                L.append(f"  Measured: {f['explanation']}.")
        meas = sizes[str(s)].get("measured")
        if meas:
            from recapfast.engine.flipdist import agreement_sentence, flip_sentence

            for m in MODELS:
                L.append(f"- {MODEL_TITLES[m]}: {flip_sentence(meas[m])}; "
                         f"{agreement_sentence(meas[m], 0)}.")
        L.append("")

    L += ["## Plots", ""]
    for s in run_sizes:
        curve, grid = sizes[str(s)]["figures"]
        L += [f"### {s}x{s}", "", f"Accuracy vs eps (solid: ours; dashed: paper):", "",
              f"![accuracy vs eps, {s}x{s}]({curve})", "",
              f"Fig. 2/5-style examples: the first original and the first recaptured test patch "
              f"({', '.join(f'`{n}`' for n in sizes[str(s)].get('grid_files') or [])}), clean and under FGSM/LLCM at eps "
              f"{', '.join(f'{e:g}' for e in data['grid_eps'])}, on both models; each tile gives the true label, "
              f"the prediction and its probability:", "", f"![examples, {s}x{s}]({grid})", ""]

    L += ["## Data manifest and split", ""]
    head = ["size", "source", "files (orig/recap)", "content sha256", "train", "val", "test", "split sha256"]
    rows = []
    for s in run_sizes:
        d, sp = sizes[str(s)]["data"], sizes[str(s)]["split"]
        src = f"synth {d.get('generator', 'recapfast.synth/2')} seed {d['synth_seed']}" if d.get("synthesized") \
            else d.get("folder", "")
        man = d["manifest"]
        rows.append([f"{s}", src, "/".join(map(str, man["per_class"])), f"`{man['sha256'][:16]}...`"] +
                    ["/".join(map(str, sp["counts"][k])) for k in SPLIT_NAMES] + [f"`{sp['split_sha256'][:16]}...`"])
    L += _md_table(head, rows) + ["", "Full hashes in `results.json`.  The content hash is sha256 over the sorted "
                                  "(relative path, label, sha256 of the file) lines; synthesized image i of class c "
                                  "is a pure function of (synth seed, c, i, size).", ""]

    L += ["## Training", ""]
    head = ["size", "model", "iterations", "best val iteration", "best val clean", "best val FGSM eps 2"]
    rows = []
    for s in run_sizes:
        for m in MODELS:
            t = sizes[str(s)]["training"][m]
            b = t.get("best", {})
            rows.append([f"{s}", MODEL_TITLES[m], str(t["iterations"]), str(b.get("iteration", "")),
                         _p(b["clean_accuracy"]) if "clean_accuracy" in b else "",
                         _p(b["fgsm_eps2_accuracy"]) if "fgsm_eps2_accuracy" in b else ""])
    L += _md_table(head, rows) + [""]
    s0 = str(run_sizes[0])
    L += ["Exact training settings (`recapfast.training.train.TrainConfig`, robust model; the baseline differs only in "
          "`robust`):", "", "```json", json.dumps(sizes[s0]["training"]["robust"]["settings"]), "```", ""]

    L += ["## Environment and wall time", ""]
    git = data["git"]
    L += [f"- commit: {git.get('commit') or 'unknown'}" + (" (working tree had uncommitted changes)" if git.get("dirty") else ""),
          f"- machine: {machine['cpu']}, {machine['cores']} cores (torch threads {machine['torch_threads']}), "
          f"{machine['platform']}",
          f"- python {machine['python']}, torch {machine['torch']}, op backend {machine.get('backend')}",
          f"- seeds: split/training seed {cfg['seed']}; synthesis seed = seed + size",
          f"- started {data['started']}, finished {data['finished']}; sum of stage times "
          f"{data['total_stage_seconds'] / 60:.1f} min", ""]
    if data.get("command"):
        L += [f"Command: `{data['command']}`", ""]
    head = ["stage", "wall time (s)", "finished at"]
    rows = [[k, f"{v['seconds']:.1f}", v["finished_at"]] for k, v in data["stages"].items()]
    L += _md_table(head, rows) + ["", "A stage resumed after an interruption reports the time of the session "
                                  "that finished it.", ""]
    return "\n".join(L)

"""The settings of a ``recapfast reproduce`` run and its resumable state (``OUT/state.json``).

A rerun resumes only with the settings the state was made with (the fields in ``_COMPARED``);
``prepare_out`` refuses anything else rather than mixing two runs in one folder.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from recapfast.data.folder import DataError
from recapfast.io import atomic
from recapfast.models.laplacian import DEFAULT_WIDTHS
from recapfast.reproduction.paper import PAPER_SIZES

STATE_VERSION = 1


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
    scenes: tuple | None = None         # photo folders: synthesize from them, split 40/10/50 by source photo

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
        if self.scenes is not None:
            # as given (no absolute path in a committed state.json); the data stage records each photo's sha256
            self.scenes = tuple(str(f) for f in self.scenes) or None

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
            (self.scenes is None or self.data is None, "--scenes and --data: give one (--data is already synthesized)"),
            (self.scenes is None or self.generator == "v3", "--scenes needs --generator v3"),
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
                           seed=self.seed, widths=self.widths, val_attack="fgsm")   # the committed report's rule

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"], d["widths"] = list(self.sizes), list(self.widths)
        if isinstance(self.count, tuple):
            d["count"] = list(self.count)
        if self.models is not None:
            d["models"] = list(self.models)
        if self.scenes is not None:
            d["scenes"] = list(self.scenes)
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
             "models", "scenes")


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


"""Screening settings (``ScreenConfig``): what is screened, how it is probed, how the job is batched.

Every check raises ``DataError`` with a one-line message naming the command-line option.
"""
from __future__ import annotations

from dataclasses import dataclass

from recapfast import validate
from recapfast.attacks.single_step import ATTACK_SIGN, ATTACKS
from recapfast.data.folder import DataError


@dataclass
class ScreenConfig:
    size: int = 64
    probe_eps: tuple = (1.0, 2.0, 3.0, 4.0, 5.0)
    attacks: tuple = ATTACKS
    threshold: float = 0.5
    fragile_eps: float = 1.0
    max_pixels: int = 50_000_000
    batch_size: int = 32              # files per batch (one fsync per batch)
    max_batch_tiles: int = 2048       # a batch also ends once it holds this many tiles
    probe_chunk: int = 128            # tiles per gradient/adversarial forward chunk (one sweep)
    tile_map_inline: int = 256        # tile maps with more tiles go to a side file
    workers: int = 0
    resume_by: str = "stat"           # "stat": (path, size, mtime); "sha256": file content
    model: str = ""                   # what --model named (and its input convention): recorded, checked on resume

    def validate(self) -> None:
        checks = [
            (self.size >= 8, f"--size must be >= 8 pixels, got {self.size}"),
            (self.max_pixels >= 1, f"--max-pixels must be >= 1, got {self.max_pixels}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.resume_by in ("stat", "sha256"), f"--resume-by must be stat or sha256, got {self.resume_by!r}"),
            (all(a in ATTACK_SIGN for a in self.attacks), f"unknown attack in {list(self.attacks)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(message)
        self.threshold = validate.number(self.threshold, "--threshold", 0.0, 1.0)
        self.fragile_eps = validate.number(self.fragile_eps, "--fragile-eps", 0.0, validate.MAX_EPS)
        self.probe_eps = tuple(sorted(validate.check_eps(self.probe_eps or (), "--probe-eps")))

    @property
    def probed(self) -> bool:
        return bool(self.probe_eps)

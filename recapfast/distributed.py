"""torch.distributed helpers: init from the torchrun environment, deterministic sharding, reductions.

One process per rank (``torchrun --nproc-per-node N -m recapfast ...``; add ``--nnodes`` and a
rendezvous for several machines).  Backend: nccl when the rank computes on a GPU, gloo on CPU.

Sharding: rank r takes the files i with ``i % world == r`` of the deterministic (sorted) file
stream, so the union of the shards is the stream and the interleave of the per-rank outputs in
rank order gives back exactly the single-process order (``merge_parts``).

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op for one rank.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def current() -> DistInfo:
    """The process group this process is in (one rank when none was initialized)."""
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    dist.get_backend())


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init(device: torch.device | str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group if this process was started by torchrun with WORLD_SIZE > 1.

    nccl when ``device`` is a CUDA device (each rank then uses ``cuda:LOCAL_RANK``), gloo otherwise.
    Idempotent: a second call returns the group already joined.
    """
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return current()
    if env_world_size() <= 1:
        return DistInfo()
    if dist is None:
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = torch.device(device) if device is not None else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; CPU stays CPU."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def shutdown() -> None:
    """Leave the process group: wait for every rank first (a rank that tears down gloo while another is
    still in a collective or writing can abort with "terminate called without an active exception")."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(items: Iterable[T], info: DistInfo | None = None) -> Iterator[tuple[int, T]]:
    """(global index, item) for the items ``i % world == rank`` of a deterministic stream."""
    info = info or current()
    for i, item in enumerate(items):
        if i % info.world == info.rank:
            yield i, item


def shard_list(items: Sequence[T], info: DistInfo | None = None) -> list[T]:
    info = info or current()
    return list(items[info.rank::info.world]) if info.enabled else list(items)


def barrier() -> None:
    if current().enabled:
        _dist().barrier()


def _comm_device() -> torch.device:
    """Where the backend wants tensors: the rank's GPU for nccl, the CPU for gloo."""
    if current().backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (moved to the backend's device and back if needed)."""
    if not current().enabled:
        return
    dist = _dist()
    where = _comm_device()
    for t in tensors:
        if t.device == where:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:
            moved = t.to(where)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved)


def all_reduce_max(value: float) -> float:
    if not current().enabled:
        return value
    dist = _dist()
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable plain data produced by recapfast itself), in rank order."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world
    _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not current().enabled:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def summed_counters(evaluator) -> list[torch.Tensor]:
    """The tensors ``type(evaluator).SUMMED`` declares additive, in that order (the same on every rank).

    Raises TypeError when the evaluator holds a tensor attribute it did not declare: summing it could
    silently corrupt a multi-rank result (a mean, a maximum), leaving it would give rank-local numbers.
    """
    summed = tuple(getattr(type(evaluator), "SUMMED", ()))
    undeclared = sorted(name for name, value in vars(evaluator).items()
                        if isinstance(value, torch.Tensor) and name not in summed)
    if undeclared:
        raise TypeError(f"{type(evaluator).__name__}: tensor attribute(s) {', '.join(undeclared)} not in "
                        f"{type(evaluator).__name__}.SUMMED; declare additive counters there (they are summed over "
                        f"the ranks) and reduce anything else explicitly")
    missing = [name for name in summed if not isinstance(getattr(evaluator, name, None), torch.Tensor)]
    if missing:
        raise TypeError(f"{type(evaluator).__name__}.SUMMED names {', '.join(missing)}, which is not a tensor")
    return [getattr(evaluator, name) for name in summed]


def reduce_evaluator(evaluator, files: int, errors: list, notes: list) -> tuple[int, list, list]:
    """Sum an Evaluator's declared counters (``Evaluator.SUMMED``) over the ranks; gather the per-file errors and notes.

    After this every rank holds the counters of the whole data set, so ``evaluator.result()``
    gives the single-process numbers (counts exactly; float sums up to summation order).
    Only the declared counters are summed; an undeclared tensor attribute raises (:func:`summed_counters`),
    on one rank as on several, before any collective.
    """
    counters = summed_counters(evaluator)
    if not current().enabled:
        return files, errors, notes
    all_reduce_sum_(counters)
    total = torch.tensor([files], dtype=torch.long, device=evaluator.per_class.device)
    all_reduce_sum_([total])
    gathered = all_gather_objects((errors, notes))
    errors = sorted((e for part, _ in gathered for e in part), key=lambda e: e["path"])
    notes = sorted((n for _, part in gathered for n in part), key=lambda n: n["path"])
    return int(total.item()), errors, notes


def part_path(out: Path, rank: int, world: int) -> Path:
    """Rank ``rank``'s part file, beside OUT (never outside OUT's folder)."""
    return out.with_name(f"{out.name}.part{rank:05d}-of-{world:05d}")


def merge_parts(parts: Sequence[Path], out: Path) -> int:
    """Interleave the part files line by line in rank order into ``out`` atomically; returns lines.

    Part r holds the records of stream items r, r + W, r + 2W, ... in order, so taking one line
    from each part in turn restores the single-process order.  A part that ends early ends the
    round robin for itself only (it had fewer items).
    """
    from recapfast.io import atomic

    lines = 0

    def interleave(sink) -> None:
        nonlocal lines
        handles = [open(p, "rb") for p in parts]
        try:
            live = list(range(len(handles)))
            while live:
                still = []
                for r in live:
                    line = handles[r].readline()
                    if not line:
                        continue
                    if not line.endswith(b"\n"):
                        raise RuntimeError(f"{parts[r]}: torn last line (a rank did not finish)")
                    sink.write(line)
                    lines += 1
                    still.append(r)
                live = still
        finally:
            for h in handles:
                h.close()

    atomic.write_file(out, writer=interleave)
    return lines


# ----------------------------------------------------------------------------- data-parallel training

class RankSlices:
    """Batch sampler: rank r's slice ``batch[r::world]`` of every global batch of ``sampler``.

    The global batch (and so the loss, averaged over ranks) is the single-process one; each rank
    decodes and computes only its ``batch_size / world`` images.
    """

    def __init__(self, sampler, info: DistInfo):
        self.sampler, self.info = sampler, info

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield batch[self.info.rank::self.info.world]


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Every rank starts from rank ``src``'s parameters and buffers."""
    if not current().enabled:
        return
    dist = _dist()
    where = _comm_device()
    for t in list(module.parameters()) + list(module.buffers()):
        moved = t.data.to(where)
        dist.broadcast(moved, src=src)
        t.data.copy_(moved)


def average_gradients_(module: torch.nn.Module) -> None:
    """Mean of the parameter gradients over the ranks (what DistributedDataParallel's hooks compute).

    Done explicitly after ``backward`` rather than with DDP's hooks because the robust objective
    differentiates through ``torch.autograd.grad(create_graph=True)``, which DDP does not support.
    """
    info = current()
    if not info.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum_([flat])
    flat /= info.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def average_buffers_(module: torch.nn.Module) -> None:
    """Mean of the floating-point buffers (BatchNorm running statistics) over the ranks."""
    info = current()
    if not info.enabled:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    all_reduce_sum_(buffers)
    for b in buffers:
        b /= info.world


def mean_over_ranks(value: float) -> float:
    info = current()
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    all_reduce_sum_([t])
    return float(t.item()) / info.world


def mean_over_ranks_each(values: Sequence[torch.Tensor]) -> list[float]:
    """[mean over the ranks of float(v) for v in values]: one host sync and one all-reduce for all of them.

    Equal to ``[mean_over_ranks(float(v)) for v in values]`` (float64 sums, then / world), which costs a
    sync and an all-reduce per value: training keeps its per-step losses on the device and reads them
    here only when it logs.
    """
    if not values:
        return []
    stacked = torch.stack([v.detach().reshape(()) for v in values]).to(torch.float64)
    info = current()
    if info.enabled:
        all_reduce_sum_([stacked])
        return [v / info.world for v in stacked.tolist()]
    return stacked.tolist()

"""torchrun with 2 gloo ranks on CPU gives exactly the single-process results (screen, eval)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import recapfast as rf
from recapfast import distributed
from recapfast.engine.screen import ScreenConfig, screen_folder

from screen_helpers import env, read_jsonl, save_tiny_model, write_images


def torchrun(*args, cwd, timeout=180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recapfast", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def test_shard_and_merge_restore_the_stream_order(tmp_path):
    items = list(range(11))
    for world in (1, 2, 3, 4):
        parts = []
        for rank in range(world):
            info = distributed.DistInfo(rank, world)
            mine = list(distributed.shard(items, info))
            assert all(i % world == rank for i, _ in mine)
            part = distributed.part_path(tmp_path / "o.jsonl", rank, world)
            part.write_text("".join(f"{v}\n" for _, v in mine))
            parts.append(part)
        assert distributed.merge_parts(parts, tmp_path / "o.jsonl") == 11
        assert (tmp_path / "o.jsonl").read_text() == "".join(f"{v}\n" for v in items)


def test_torchrun_screen_is_identical_to_a_single_process_run(tmp_path):
    root = tmp_path / "in"
    write_images(root, 6, shape=(80, 112, 3), seed=9)
    write_images(root / "deeper", 4, shape=(64, 70, 3), seed=10)
    (root / "broken.png").write_bytes(b"not a png")            # 11 files: uneven shards, an error record
    model_path = save_tiny_model(tmp_path / "m.safetensors")
    model = rf.load_model(model_path)
    single = tmp_path / "single.jsonl"
    ref = screen_folder(model, root, single, ScreenConfig(size=32, probe_eps=(1, 2, 3), threshold=0.6432,
                                                          model=str(model_path)))     # the CLI records --model
    out = tmp_path / "dist.jsonl"
    res = torchrun("screen", root, "--out", out, "--model", model_path, "--size", 32, "--probe-eps", "1,2,3",
                   "--threshold", 0.6432, "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.read_bytes() == single.read_bytes()           # byte-identical records, same order
    assert not list(tmp_path.glob("dist.jsonl.part*"))       # parts merged and removed
    summary = json.loads((tmp_path / "dist.summary.json").read_text())
    for key in ("records", "screened", "errors", "decisions", "fragile", "errors_by_reason", "flip_eps_histogram"):
        assert summary[key] == ref.summary[key], key
    assert summary["this_run"]["ranks"] == 2 and summary["this_run"]["files_processed"] == 11
    assert len(read_jsonl(out)) == 11


def test_torchrun_eval_reduces_counters_to_the_single_process_result(tmp_path, synth_dir):
    from recapfast.engine.evaluate import evaluate_folder

    model_path = save_tiny_model(tmp_path / "m.safetensors")
    model = rf.load_model(model_path)
    torch.set_num_threads(1)
    ref = evaluate_folder(model, synth_dir, eps=[1, 2], attacks=("fgsm", "llcm"), size=32, batch_size=7,
                          on_error=None)
    out = tmp_path / "dist.json"
    res = torchrun("eval", synth_dir, "--model", model_path, "--eps", "1,2", "--size", 32, "--batch-size", 7,
                   "--device", "cpu", "--quiet", "--json", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    header = ref.to_markdown().strip().splitlines()[0]
    assert res.stdout.count(header) == 1                       # rank 0 alone prints the tables
    got = json.loads(out.read_text())
    want = json.loads(ref.to_json())
    for key in ("files", "patches", "patches_per_class", "clean_correct", "clean_accuracy", "clean_accuracy_per_class"):
        assert got[key] == want[key], key
    assert len(got["cells"]) == len(want["cells"]) == 4
    for g, w in zip(got["cells"], want["cells"]):
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (w["attack"], w["eps"], key)
            else:
                assert g[key] == value, (w["attack"], w["eps"], key)


# Per-rank BatchNorm (SyncBatchNorm needs CUDA): each rank normalizes its half of the global batch,
# so the loss differs from one process by the BN statistics of 4 vs 8 images.  Measured: max per-step
# difference 0.014, mean 0.007 (loss ~0.45-0.75).  Gradients are averaged over ranks exactly as DDP does
# and BN running statistics averaged after every step, so every rank holds the same model.
LOSS_TOLERANCE_MAX, LOSS_TOLERANCE_MEAN = 0.05, 0.02


@pytest.mark.parametrize("robust", [False, True, "fast-at", "trades"], ids=["baseline", "robust", "fast-at", "trades"])
def test_torchrun_train_loss_curve_matches_single_process(tmp_path, synth_dir, robust):
    from recapfast.training.train import TrainConfig, resume_path, train

    args = dict(iters=8, val_every=1, batch_size=8, widths=(4, 4, 8, 8, 8), size=32, lr=3e-3)
    extra = ["--robust", "--adv-count", 4, "--penalty", 1.0] if robust is True else []
    if robust is True:
        args.update(robust=True, adv_count=4, penalty=1.0)
    elif robust:                    # fast-at / trades: each rank draws its own images' eps and noise
        extra = ["--defense", robust, "--val-attack-steps", 2] + (["--trades-steps", 2] if robust == "trades" else [])
        args.update(defense=robust, val_attack_steps=2, trades_steps=2)
    torch.set_num_threads(1)
    single = train(synth_dir, tmp_path / "single.safetensors", TrainConfig(**args), log=lambda m: None)
    res = torchrun("train", synth_dir, "--out", tmp_path / "dist.safetensors", "--iters", 8, "--val-every", 1,
                   "--batch-size", 8, "--widths", "4,4,8,8,8", "--size", 32, "--lr", "3e-3", "--device", "cpu",
                   "--quiet", *extra, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(resume_path(tmp_path / "dist.safetensors"), weights_only=True)
    dist_losses = [h["loss"] for h in state["history"]]
    single_losses = [h["loss"] for h in single.history]
    assert len(dist_losses) == len(single_losses) == 8
    diffs = [abs(a - b) for a, b in zip(dist_losses, single_losses)]
    # fast-at/TRADES: their sign-step images turn the ranks' BatchNorm difference into discrete jumps (measured: max
    # 0.083, mean 0.026 of losses ~0.5-0.9); that each rank attacks exactly its images is test_defenses.py's exact test.
    scale = 2.0 if robust in ("fast-at", "trades") else 1.0
    assert max(diffs) <= scale * LOSS_TOLERANCE_MAX and sum(diffs) / len(diffs) <= scale * LOSS_TOLERANCE_MEAN, diffs
    assert rf.load_model(tmp_path / "dist.safetensors") is not None


def test_evaluator_declares_its_summed_counters(small_model):
    """Every tensor an Evaluator holds is declared in Evaluator.SUMMED, and only those are reduced."""
    from recapfast.engine.evaluate import Evaluator

    ev = Evaluator(small_model, [1, 2], ("fgsm", "llcm"))
    tensors = {k for k, v in vars(ev).items() if isinstance(v, torch.Tensor)}
    assert tensors == set(Evaluator.SUMMED)
    assert [id(t) for t in distributed.summed_counters(ev)] == [id(getattr(ev, k)) for k in Evaluator.SUMMED]
    assert distributed.reduce_evaluator(ev, 5, [], []) == (5, [], [])          # one rank: nothing changes


def test_an_undeclared_tensor_on_the_evaluator_is_refused(small_model):
    from recapfast.engine.evaluate import Evaluator

    ev = Evaluator(small_model, [1], ("fgsm",))
    ev.max_logit = torch.zeros(1)             # not additive: summing it over ranks would be wrong
    with pytest.raises(TypeError, match=r"max_logit not in Evaluator\.SUMMED"):
        distributed.reduce_evaluator(ev, 0, [], [])


def _two_rank_reduce(rank: int, world: int, store: str, model, results) -> None:
    import torch.distributed as dist

    from recapfast.engine.evaluate import Evaluator

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ev = Evaluator(model, [1], ("fgsm",))
        ev.per_class += torch.tensor([rank + 1, 10 * (rank + 1)])
        ev.linf_sum += 0.5 * (rank + 1)
        files, errors, _ = distributed.reduce_evaluator(ev, rank + 2, [{"path": f"r{rank}"}], [])
        bad = Evaluator(model, [1], ("fgsm",))
        bad.max_logit = torch.full((1,), float(rank))
        try:
            distributed.reduce_evaluator(bad, 0, [], [])
            refused = False
        except TypeError:
            refused = True
        results.put((rank, ev.per_class.tolist(), ev.linf_sum.tolist(), files, [e["path"] for e in errors],
                     bad.max_logit.tolist(), refused))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_sum_declared_counters_and_refuse_undeclared(tmp_path, small_model):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=_two_rank_reduce, args=(r, 2, str(tmp_path / "store"), small_model, results))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = sorted(results.get() for _ in range(2))
    for rank, per_class, linf, files, errors, max_logit, refused in got:
        assert per_class == [3, 30] and linf == [[1.5]] and files == 5 and errors == ["r0", "r1"]
        assert refused and max_logit == [float(rank)]       # refused before any collective: left as it was

"""torchrun with 2 gloo ranks: worst case, masking checks, detection metrics and JPEG rows equal one process."""
from __future__ import annotations

import json

import torch

import recapfast as rf
from recapfast.engine.trust import TrustConfig

from screen_helpers import save_tiny_model
from test_distributed import torchrun


def test_torchrun_eval_trust_parts_equal_single_process(tmp_path, synth_dir):
    from recapfast.engine.evaluate import evaluate_folder

    model_path = save_tiny_model(tmp_path / "m.safetensors")
    torch.set_num_threads(1)
    ref = evaluate_folder(rf.load_model(model_path), synth_dir, eps=[1, 3], attacks=("fgsm", "bim"), size=32,
                          batch_size=7, on_error=None, trust=TrustConfig(jpeg=(80,)))
    out = tmp_path / "dist.json"
    res = torchrun("eval", synth_dir, "--model", model_path, "--eps", "1,3", "--attack", "fgsm,bim", "--jpeg", 80,
                   "--size", 32, "--batch-size", 7, "--device", "cpu", "--quiet", "--json", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got, want = json.loads(out.read_text()), json.loads(ref.to_json())
    for key in ("worst_case", "masking", "detection", "jpeg"):
        assert got[key] == want[key], key

"""Thread choice (recapfast.runtime) and the eval command's --metrics / --threads options."""
from __future__ import annotations

import json
import math

import pytest
import torch

from recapfast import runtime

from screen_helpers import cli


@pytest.mark.parametrize("cores, load, expected", [(2, 0.1, 2), (2, 0.6, 1), (2, 1.4, 1), (2, 9.0, 1),
                                                   (16, 3.2, 13), (16, 0.0, 16), (4, 4.0, 1)])
def test_threads_take_the_cores_the_load_leaves_free(monkeypatch, cores, load, expected):
    monkeypatch.delenv("RECAPFAST_THREADS", raising=False)
    chosen = runtime.choose_threads(cores=cores, load=load)
    assert chosen.threads == expected and str(cores) in chosen.reason


def test_requested_threads_win(monkeypatch):
    monkeypatch.setenv("RECAPFAST_THREADS", "3")
    assert runtime.choose_threads(cores=2, load=9.0).threads == 3
    assert runtime.choose_threads(5, cores=2, load=9.0).threads == 5     # --threads wins over the environment
    for bad in ("0", "x"):
        monkeypatch.setenv("RECAPFAST_THREADS", bad)
        with pytest.raises(ValueError, match="RECAPFAST_THREADS"):
            runtime.choose_threads()


def test_apply_threads_sets_torch_and_is_recorded(monkeypatch):
    monkeypatch.delenv("RECAPFAST_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        chosen = runtime.apply_threads(1)
        assert torch.get_num_threads() == 1
        assert runtime.settings()["threads"] == chosen.to_dict()
    finally:
        torch.set_num_threads(before)


def test_eval_metrics_levels_and_threads_in_the_result(tmp_path, synth_dir):
    results = {}
    for level in ("full", "fast", "none"):
        out = tmp_path / f"{level}.json"
        res = cli("--threads", "1", "eval", synth_dir, "--metrics", level, "--json", out, "--eps", "1,2")
        assert res.returncode == 0, res.stderr
        results[level] = json.loads(out.read_text())
        assert results[level]["settings"]["threads"]["threads"] == 1
        assert results[level]["metrics"] == level
        if level == "none":
            assert "Perturbation size" not in res.stdout
        else:
            assert "Perturbation size" in res.stdout
    full, fast, none = (results[k]["cells"] for k in ("full", "fast", "none"))
    for a, b, c in zip(full, fast, none):
        assert a["accuracy"] == b["accuracy"] == c["accuracy"]           # metrics never change the verdicts
        assert 0 < a["mean_ssim"] <= 1 and b["mean_ssim"] is None or math.isnan(b["mean_ssim"] or math.nan)
        assert a["mean_linf"] == b["mean_linf"] and a["mean_psnr"] == b["mean_psnr"]
        assert c["unchanged"] is None and (c["mean_linf"] is None or math.isnan(c["mean_linf"]))
    bad = cli("eval", synth_dir, "--metrics", "most")
    assert bad.returncode == 1 and "--metrics" in bad.stderr
    bad = cli("--threads", "0", "eval", synth_dir)
    assert bad.returncode == 1 and "--threads" in bad.stderr

"""`recapfast reproduce`: the worst-case stage (`eval --attack auto,llcm` per size), finding (c) against it,
and the masking marks of the report and the plot."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from recapfast.attacks.apgd import APGDConfig
from recapfast.attacks.square import SquareConfig
from recapfast.engine.trust import TrustConfig
from recapfast.reproduction import run as rp
from recapfast.reproduction.config import ReproduceConfig
from recapfast.reproduction.paper import EPS, PAPER_ADVERSARIAL, PAPER_CLEAN, worst_finding
from recapfast.reproduction.report import render_report

pytest.importorskip("matplotlib")

# The bundled 64 px models at 32 px (cheaper than training a model that is not degenerate); 8 + 8 test patches.
TINY = dict(sizes=(32,), count=16, iters=4, models=("baseline", "robust"), eval_batch=16)
# The tests weaken the worst stage's attacks for speed (the stage records and the report prints the settings).
CHEAP = TrustConfig(cascade=True, apgd=APGDConfig(steps=10), square=SquareConfig(queries=40))


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def worst_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("repro_worst") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp, "worst_trust", lambda: CHEAP)
        result = rp.reproduce(out, ReproduceConfig(**TINY), workers=1, log=quiet)
    return out, result


def test_worst_stage_defaults_are_eval_auto_defaults():
    t = rp.worst_trust()
    assert t.cascade and t.apgd == APGDConfig() and t.square == SquareConfig()     # no weakened attack
    assert (t.apgd.steps, t.square.queries) == (100, 1000)


def test_worst_row_never_above_clean_fgsm_llcm(worst_run):
    out, result = worst_run
    assert "32/worst" in result.ran and result.ran.index("32/worst") == result.ran.index("32/eval") + 1
    data = json.loads((out / "results.json").read_text())
    size = data["sizes"]["32"]
    w = size["worst"]
    assert w["patches"] == 16 and w["attacks"] == ["fgsm", "llcm", "apgd", "square"]
    for m in ("baseline", "robust"):
        r = w["models"][m]
        n = r["patches"]
        count = lambda acc: round(acc * n)  # noqa: E731
        assert r["attack_settings"]["apgd"]["steps"] == 10 and r["attack_settings"]["square"]["queries"] == 40
        for j in range(len(EPS)):
            worst = r["worst_correct"][j]
            assert worst == count(r["worst"][j])
            # the stage's own rows on the same patches, and the eval stage's rows (here the same 16 patches)
            assert worst <= count(r["clean"]) and worst <= count(r["fgsm"][j]) and worst <= count(r["llcm"][j])
            assert worst <= count(r["apgd"][j]) and worst <= count(r["square"][j])
            ev = size["evaluation"][m]
            assert worst <= round(ev["clean_accuracy"] * ev["patches"])
            assert worst <= round(ev["fgsm"]["accuracy"][j] * ev["patches"])
            assert worst <= round(ev["llcm"]["accuracy"][j] * ev["patches"])
        assert r["fgsm"] == size["numbers"][m]["fgsm"]              # same patches, same deterministic FGSM
    f = w["finding"]
    assert set(f) >= {"holds", "rule", "per_eps", "only_paper_attacks", "sentence"}
    report = (out / "report.md").read_text()
    assert "| (c) worst case |" in report and "- (c) against the worst case" in report
    assert "worst case (16 patches)" in report and "APGD-CE 10 steps" in report and "Square 40 queries" in report


def test_resumed_run_does_not_redo_the_worst_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "worst_trust", lambda: CHEAP)
    out = tmp_path / "out"
    first = rp.reproduce(out, ReproduceConfig(**TINY), workers=1, log=quiet, stop_after="32/worst")
    assert first.ran[-1] == "32/worst" and not (out / "report.md").exists()
    record = json.loads((out / "state.json").read_text())["stages"]["32/worst"]

    def boom(*_a, **_k):
        raise AssertionError("the worst stage ran again")

    monkeypatch.setattr(rp, "worst_case", boom)
    second = rp.reproduce(out, ReproduceConfig(**TINY), workers=1, log=quiet)
    assert "32/worst" in second.skipped and second.ran == ["32/measure", "32/figures"]
    assert json.loads((out / "state.json").read_text())["stages"]["32/worst"] == record
    assert json.loads((out / "results.json").read_text())["sizes"]["32"]["worst"]["models"] == record["models"]


FLAG = {"check": "accuracy_rises_with_eps", "status": "flagged",
        "evidence": [{"lower": "FGSM eps=1", "higher": "FGSM eps=5", "accuracy_lower": 0.1, "accuracy_higher": 0.9,
                      "points": 80.0, "correct_only_under_higher": 13, "correct_only_under_lower": 0,
                      "p_value": 1e-4, "patches": 16}]}


def _flagged(data: dict) -> dict:
    """The results with the robust model's masking checks flagged and the baseline's all passed."""
    d = copy.deepcopy(data)
    w = d["sizes"]["32"]["worst"]
    for m in ("baseline", "robust"):
        masking = w["models"][m]["masking"]
        masking["checks"] = [dict(c, status="passed" if c["status"] == "flagged" else c["status"], evidence=[])
                             for c in masking["checks"]]
        masking["degenerate"] = dict(masking.get("degenerate") or {"check": "degenerate_model"}, status="passed",
                                     reasons=[])
        masking["suspected"] = False
    rob = w["models"]["robust"]["masking"]
    rob["checks"] = [FLAG if c["check"] == FLAG["check"] else c for c in rob["checks"]]
    rob["suspected"] = True
    return d


def test_masked_model_is_marked_in_report_and_plot(worst_run, tmp_path):
    from PIL import Image

    from recapfast.reporting import plots

    out, _ = worst_run
    data = _flagged(json.loads((out / "results.json").read_text()))
    report = render_report(data)
    mark = "(masking suspected: accuracy rises with eps at 32x32)"
    heads = {line for line in report.splitlines() if line.startswith("## Table")}
    assert any(h.startswith("## Table 3") and h.endswith(mark) for h in heads)
    assert not any(h.startswith("## Table 2") and "masking" in h for h in heads)
    assert f"| Prop {mark} |" in report and "| Yang |" in report
    assert "worst case (16 patches) (masking suspected: accuracy rises with eps) |" in report
    assert "- Prop: **masking suspected** (accuracy rises with eps)" in report
    assert "- Yang: no gradient-masking check flagged" in report

    w = data["sizes"]["32"]["worst"]
    png = plots.accuracy_vs_eps(32, data["sizes"]["32"]["evaluation"], PAPER_CLEAN, PAPER_ADVERSARIAL, EPS,
                                tmp_path / "curve.png", worst=w)
    baseline_title, robust_title = Image.open(png).text["Description"].split(" | ")
    assert baseline_title == "Yang (baseline), 32x32"
    assert robust_title == "proposed (robust), 32x32 (masking suspected: accuracy rises with eps)"
    assert plots.panel_title("robust", 32, w).endswith("(masking suspected: accuracy rises with eps)")

    # no flag anywhere: no mark anywhere
    clean = _flagged(json.loads((out / "results.json").read_text()))
    clean["sizes"]["32"]["worst"]["models"]["robust"]["masking"]["checks"] = \
        data["sizes"]["32"]["worst"]["models"]["baseline"]["masking"]["checks"]
    assert "masking suspected" not in render_report(clean)
    png = plots.accuracy_vs_eps(32, clean["sizes"]["32"]["evaluation"], PAPER_CLEAN, PAPER_ADVERSARIAL, EPS,
                                tmp_path / "clean.png", worst=clean["sizes"]["32"]["worst"])
    assert "masking" not in Image.open(png).text["Description"]


def test_a_degenerate_model_is_marked(worst_run):
    out, _ = worst_run
    data = _flagged(json.loads((out / "results.json").read_text()))
    base = data["sizes"]["32"]["worst"]["models"]["baseline"]["masking"]
    base["degenerate"] = {"check": "degenerate_model", "status": "flagged", "reasons": ["it predicts class 0"]}
    report = render_report(data)
    assert any(line.startswith("## Table 2") and "degenerate model at 32x32" in line for line in report.splitlines())


def test_results_without_a_worst_stage_render_not_run(worst_run):
    out, _ = worst_run
    data = json.loads((out / "results.json").read_text())
    data["sizes"]["32"]["worst"] = None
    report = render_report(data)
    assert "| (c) worst case |" in report and "| not run |" in report
    assert "- (c) against the worst case: not run" in report and "masking suspected" not in report


def _numbers(robust_worst):
    return {"patches": 100, "models": {
        "baseline": {"clean": 0.96, "fgsm": [0.05] * 5, "llcm": [0.06] * 5, "worst": [0.02] * 5},
        "robust": {"clean": 0.95, "fgsm": [0.90] * 5, "llcm": [0.88] * 5, "worst": robust_worst}}}


def test_worst_finding_says_where_the_defence_holds_only_against_the_papers_attacks():
    f = worst_finding(_numbers([0.80, 0.60, 0.30, 0.10, 0.05]), c_holds=True)
    assert not f["holds"] and f["only_paper_attacks"] == [3.0, 4.0, 5.0]
    assert f["sentence"].startswith("the defence holds only against the attacks the paper tried at eps 3, 4, 5")
    # the numbers the sentence compares: recovery (0.30 - 0.02) / (0.96 - 0.02) = 30% vs (0.90 - 0.05) / 0.91 = 93%
    assert "eps 3: robust worst case 30.0% vs FGSM 90.0%, LLCM 88.0%; recovery 30% vs 93% / 91%" in f["sentence"]
    assert "on the same 100 test patches" in f["sentence"]
    f = worst_finding(_numbers([0.85] * 5), c_holds=True)
    assert f["holds"] and f["only_paper_attacks"] == [] and "holds against the worst case too" in f["sentence"]
    # the worst case costs the baseline nothing: no gap, nothing to check
    n = _numbers([0.85] * 5)
    n["models"]["baseline"]["worst"] = [0.96] * 5
    f = worst_finding(n)
    assert not f["holds"] and "undefined at every eps" in f["sentence"]

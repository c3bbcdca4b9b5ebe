"""The demo's worst-case check: the auto cascade with reduced budgets on the first patches of each class, and
what the demo prints from it (a masked model's FGSM row must not be read as robustness)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import recapfast as rf
from recapfast.attacks.apgd import APGDConfig
from recapfast.attacks.square import SquareConfig
from recapfast.cli import app
from recapfast.data.folder import discover
from recapfast.engine.evaluate import evaluate_folder
from recapfast.engine.quickcheck import QuickCheck, first_per_class, worst_case_check
from recapfast.engine.trust import TrustConfig
from recapfast.reporting.quickcheck import quickcheck_markdown


def test_first_per_class_keeps_file_order_and_counts():
    from recapfast.data.folder import Sample

    samples = [Sample(f"{c}{i}", c) for c in (0, 1) for i in range(5)] + [Sample("late0", 0)]
    got = first_per_class(samples, 3)
    assert [s.path for s in got] == ["00", "01", "02", "10", "11", "12"]
    assert first_per_class(samples, 0) == []


def test_the_check_is_the_auto_cascade_on_a_copy_of_the_first_files(synth_dir, tmp_path):
    """Same worst case, cascade counts and masking verdict as `eval --attack auto` with the same budgets on a
    folder holding only the first files of each class."""
    check = QuickCheck(per_class=6, apgd_steps=10, square_queries=40)
    model = rf.load_model("robust")
    got = worst_case_check(model, synth_dir, (1, 2, 3), check, model_name="robust")
    copy = tmp_path / "first"
    for s in first_per_class(discover(synth_dir), 6):
        dest = copy / Path(s.path).relative_to(synth_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, dest)
    trust = TrustConfig(apgd=APGDConfig(steps=10), square=SquareConfig(queries=40), cascade=True)
    want = evaluate_folder(model, copy, (1, 2, 3), ("fgsm", "apgd", "square"), metrics="none", trust=trust,
                           on_error=None)
    assert got.patches == 12 and got.patches_per_class == [6, 6]
    assert got.worst_case["cells"] == want.worst_case["cells"]
    assert got.worst_case["cascade"] == want.worst_case["cascade"]
    assert got.masking["suspected"] == want.masking["suspected"]
    assert got.attack_settings["apgd"]["steps"] == 10 and got.attack_settings["square"]["queries"] == 40
    text = quickcheck_markdown(got, 48)
    assert "12 of the 48 patches (the first 6 of each class)" in text
    assert "APGD-CE (10 steps, 1 restart)" in text and "Square (40 queries)" in text
    for cell in got.worst_case["cells"]:
        fgsm = next(c for c in got.cells if c.attack == "fgsm" and c.eps == cell["eps"])
        assert cell["accuracy"] <= min(fgsm.accuracy, got.clean_accuracy)
        assert f"| {cell['eps']:g} | {100 * got.clean_accuracy:.1f}% | {100 * fgsm.accuracy:.1f}% | " \
               f"{100 * cell['accuracy']:.1f}% |" in text


@pytest.mark.parametrize("count", [40])
def test_demo_says_the_bundled_robust_model_is_masked(tmp_path, count):
    """The first output a newcomer sees: the robust model's FGSM accuracy rises with eps while the worst case
    stays at the bottom, and the demo says so for that model (and prints the check for both)."""
    res = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--count", str(count), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.count("### Worst-case check:") == 2
    assert f"of the {2 * count} patches (the first 32 of each class)" in res.output
    robust = res.output.split("### Worst-case check: robust", 1)[1]
    assert "**Gradient masking suspected** for robust" in robust
    assert "Its FGSM and LLCM rows above are not evidence of robustness." in robust

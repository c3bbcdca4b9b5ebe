"""docs/training.md's "Bundled models" numbers and the README's limits block are the committed evaluation JSON,
rendered (never typed by hand), and every one of those files measured the weights that are bundled now."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from recapfast.reporting import bundled as bundled_report
from recapfast.models.checkpoint import read_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "bundled"
WEIGHTS = ROOT / "recapfast" / "weights"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_page_table_is_the_rendered_json():
    page = (ROOT / "docs" / "training.md").read_text()
    assert bundled_report.table(DOCS) in page


def test_readme_limits_are_the_rendered_json():
    assert bundled_report.limits(DOCS) in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name,files", [("baseline", ("baseline_test.json", "baseline_photos.json", "baseline_sources.json",
                                                      "baseline_jpeg.json", "baseline_flip.json")),
                                        ("robust", ("robust_test.json",))])
def test_committed_numbers_are_of_the_bundled_weights(name, files):
    """Stale numbers fail: each evaluation file names the sha256 of the weights it measured."""
    sha = _sha(WEIGHTS / f"{name}.safetensors")
    for f in files:
        data = json.loads((DOCS / f).read_text())
        assert data.get("model_sha256") == sha, f"docs/bundled/{f} measured other weights than {name}.safetensors"


def test_bundled_evaluations_are_of_the_bundled_weights_settings():
    """The JSON files evaluate 64 px patches of the fresh test set (both classes) with FGSM/LLCM at eps 1..5,
    the photos file holds originals only, and the recorded training runs are the bundled checkpoints' settings."""
    for name in ("baseline", "robust"):
        r = json.loads((DOCS / f"{name}_test.json").read_text())
        assert r["patch_size"] == 64 and r["eps"] == [1.0, 2.0, 3.0, 4.0, 5.0] and set(r["attacks"]) == {"fgsm", "llcm"}
        assert min(r["patches_per_class"]) >= 600 and r["quantized"] is True
        rec = json.loads((DOCS / f"{name}_train.json").read_text())
        assert rec["training"] == read_config(name)["training"] and rec["history"] == read_config(name)["history"]
        assert rec["threads"] == 1 and rec["cpu_seconds"] > 0 and rec["wall_seconds"] > 0
    photos = json.loads((DOCS / "baseline_photos.json").read_text())
    assert {r["label"] for r in photos["rows"]} == {0} and len(photos["rows"]) >= 6
    base, rob = read_config("baseline")["training"], read_config("robust")["training"]
    assert (rob["robust"], rob["penalty"], rob["penalty_mode"], rob["init"]) == (True, 10.0, "fd", "baseline.safetensors")
    assert base["robust"] is False and base["widths"] == rob["widths"] == [8, 16, 32, 64, 128] and base["size"] == 64

"""docs/training.md's "Bundled models" numbers are the committed evaluation JSON, rendered (never typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path

from recapfast.reporting import bundled as bundled_report
from recapfast.models.checkpoint import read_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "bundled"


def test_training_page_table_is_the_rendered_json():
    page = (ROOT / "docs" / "training.md").read_text()
    assert bundled_report.table(DOCS) in page


def test_bundled_evaluations_are_of_the_bundled_weights_settings():
    """The JSON files evaluate 64 px patches of the held-out split (both classes) with FGSM/LLCM at eps 1..5,
    and the bundled checkpoints record the training commands docs/training.md shows."""
    for name in ("baseline", "robust"):
        r = json.loads((DOCS / f"{name}_test.json").read_text())
        assert r["patch_size"] == 64 and r["eps"] == [1.0, 2.0, 3.0, 4.0, 5.0] and set(r["attacks"]) == {"fgsm", "llcm"}
        assert min(r["patches_per_class"]) > 0 and r["quantized"] is True
    photos = json.loads((DOCS / "baseline_photos.json").read_text())
    assert photos["patches_per_class"][1] == 0 and photos["patches"] == photos["patches_per_class"][0]
    base, rob = read_config("baseline")["training"], read_config("robust")["training"]
    assert (base["iters"], base["lr"], base["lr_step"], base["robust"]) == (2000, 1e-3, 800, False)
    assert (rob["iters"], rob["lr"], rob["robust"], rob["penalty"], rob["penalty_mode"], rob["init"]) == \
        (1500, 3e-4, True, 10.0, "fd", "baseline.safetensors")
    assert base["widths"] == rob["widths"] == [8, 16, 32, 64, 128] and base["size"] == 64

"""The committed defence frontier (docs/robustness/): its table is frontier.json rendered, the pages show it, and every
variant was evaluated on the same patches with the worst case never above clean."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "docs" / "robustness"


def _frontier():
    spec = importlib.util.spec_from_file_location("frontier", HERE / "frontier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_is_the_rendered_json_and_the_pages_hold_it():
    fr = _frontier()
    results = json.loads((HERE / "frontier.json").read_text())
    table = fr.render(results)
    assert (HERE / "frontier.md").read_text() == table
    for page in (ROOT / "docs" / "robustness.md", ROOT / "README.md"):
        assert table.strip() in page.read_text(), f"{page.name} does not hold docs/robustness/frontier.md"
    assert (HERE / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_variant_is_measured_alike():
    fr = _frontier()
    rows = json.loads((HERE / "frontier.json").read_text())["variants"]
    names = [r["name"] for r in rows]
    assert names[0] == "baseline" and set(names[1:]) <= set(fr.REFERENCES) | set(fr.VARIANTS)
    assert len(set(names)) == len(names)
    longer = json.loads((HERE / "frontier.json").read_text()).get("longer", [])
    assert all(r["name"] in fr.VARIANTS for r in longer)
    assert len({r["patches"] for r in rows + longer}) == 1
    for r in rows + longer:
        assert set(r["worst"]) == {"1", "2", "3", "4", "5"}
        assert all(w <= r["clean"] + 1e-12 for w in r["worst"].values())
        assert all(a >= b - 1e-12 for a, b in zip(list(r["worst"].values()), list(r["worst"].values())[1:]))
        if r["name"] not in fr.REFERENCES:
            assert r["training"]["init"] == "baseline" and r["model_sha256"]

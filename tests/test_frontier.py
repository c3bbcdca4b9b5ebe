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


def _sandbox(tmp_path, monkeypatch):
    """frontier.py with its json, table, plot and pages redirected to copies under tmp_path."""
    fr = _frontier()
    for attr, src in (("RESULTS", HERE / "frontier.json"), ("TABLE", HERE / "frontier.md"),
                      ("PLOT", HERE / "frontier.png")):
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes())
        monkeypatch.setattr(fr, attr, dst)
    pages = []
    for src in (ROOT / "docs" / "robustness.md", ROOT / "README.md"):
        dst = tmp_path / src.name
        dst.write_text(src.read_text())
        pages.append(dst)
    monkeypatch.setattr(fr, "PAGES", tuple(pages))
    return fr


def test_render_with_work_updates_by_name_and_keeps_the_rest(tmp_path, monkeypatch):
    fr = _sandbox(tmp_path, monkeypatch)
    committed = json.loads((HERE / "frontier.json").read_text())
    work = tmp_path / "work"
    work.mkdir()
    # an empty WORK changes nothing: not the json (setup and training-length rows included), not the pages
    monkeypatch.setattr("sys.argv", ["frontier.py", "--render", "--work", str(work)])
    fr.main()
    assert json.loads(fr.RESULTS.read_text()) == committed
    assert fr.TABLE.read_text() == (HERE / "frontier.md").read_text()
    assert fr.PAGES[1].read_text() == (ROOT / "README.md").read_text()
    # one new record replaces its namesake only; the other rows and the `longer` list stay
    name = committed["variants"][1]["name"]
    rec = dict(committed["variants"][1], clean=1.0)
    (work / f"{name}.record.json").write_text(json.dumps(rec))
    fr.main()
    after = json.loads(fr.RESULTS.read_text())
    assert [r["name"] for r in after["variants"]] == [r["name"] for r in committed["variants"]]
    assert after["variants"][1]["clean"] == 1.0
    assert after["variants"][2:] == committed["variants"][2:]
    assert after.get("longer") == committed.get("longer")
    assert after["setup"]["test"] == committed["setup"]["test"] and after["setup"]["iters"] == committed["setup"]["iters"]
    assert "100.0%" in fr.TABLE.read_text() and fr.TABLE.read_text().strip() in fr.PAGES[1].read_text()

"""The HTML report (`screen --html`): one self-contained file, opened in a real headless Chromium: it renders without
console errors, holds one row per file, and its screenshot is kept as a test artifact."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recapfast.reporting.html_report import colour, heatmap_array
from screen_helpers import cli, read_jsonl, save_tiny_model, write_images

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def artifacts() -> Path:
    folder = Path(os.environ.get("RECAPFAST_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    profile.mkdir()                                   # a new, empty profile per run
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_heatmap_colours_grid_and_unscreened_strip():
    assert tuple(colour(np.array(0.0))) == (33, 102, 172) and tuple(colour(np.array(1.0))) == (178, 24, 43)
    assert tuple(colour(np.array(0.3), threshold=0.3)) == (247, 247, 247)     # white sits at the threshold
    img = np.full((40, 50, 3), 100, np.uint8)                                # 2 x 3 tiles of 16 px, strips
    out = heatmap_array(img, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], 16)
    assert out[8, 8, 2] > out[8, 8, 0] and out[24, 8, 0] > out[24, 8, 2]     # blue tile, red tile
    assert (out[0, :48] == 255).all() and (out[:32, 16] == 255).all() and (out[31, :48] == 255).all()
    strip = out[:, 48:].reshape(-1, 3)
    assert len({tuple(v) for v in strip}) == 2 and (strip[:, 0] == strip[:, 2]).all()   # hatched grey


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    root = tmp / "imgs"
    write_images(root, 3, shape=(72, 100, 3))                  # 32 px tiles: a strip right and below
    (root / "broken.png").write_bytes(b"text, not a PNG")
    model = save_tiny_model(tmp / "m.safetensors")
    res = cli("screen", root, "--out", tmp / "r.jsonl", "--html", tmp / "report.html", "--model", model,
              "--size", 32, "--probe-eps", "1,2", "--device", "cpu", "--quiet")
    assert res.returncode == 0, res.stderr
    return tmp, read_jsonl(tmp / "r.jsonl")


def test_report_is_self_contained(report):
    tmp, records = report
    text = (tmp / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\((https?:|//)|<link\b|<script\s+src""", text)
    assert text.count("data:image/jpeg;base64,") == 2 * 3      # photo + tile map per screened file
    assert text.count('<tr class="row') == len(records) == 4


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                              ".ci/run installs it): the HTML report is not checked in a browser")
def test_report_renders_in_chromium_without_console_errors(report):
    tmp, records = report
    page = tmp / "report.html"
    dom = chromium(page, tmp / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    ready = re.search(r'data-report-ready="(\d+)"', dom.stdout)
    assert ready and int(ready.group(1)) == len(records), "the page's script ran and counted one row per file"
    assert "data-js-error=" not in dom.stdout
    shot = artifacts() / "screen_report.png"
    res = chromium(page, tmp / "profile-shot", "--window-size=1280,1000", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]

    broken = tmp / "broken.html"                 # the harness itself catches a script error
    broken.write_text(page.read_text().replace("</body>", "<script>notDefinedAnywhere();</script></body>"))
    bad = chromium(broken, tmp / "profile-bad", "--dump-dom")
    assert any("Uncaught" in m for m in console_messages(bad.stderr)) and 'data-js-error="1"' in bad.stdout


@pytest.fixture(scope="module")
def eval_report(tmp_path_factory):
    from screen_helpers import write_labelled

    tmp = tmp_path_factory.mktemp("html_eval")
    data = write_labelled(tmp / "data", 6, shape=(48, 48, 3))
    model = save_tiny_model(tmp / "m.safetensors")
    res = cli("eval", data, "--model", model, "--size", 32, "--attack", "fgsm,llcm", "--eps", "1,2", "--device",
              "cpu", "--json", tmp / "r.json", "--html", tmp / "eval.html", "--quiet")
    assert res.returncode == 0, res.stderr
    return tmp


def test_eval_report_holds_tables_roc_and_one_row_per_file(eval_report):
    import json

    text = (eval_report / "eval.html").read_text()
    result = json.loads((eval_report / "r.json").read_text())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|<link\b|<script\s+src""", text)
    assert text.count('<tr class="row"') == result["files"] == 12
    assert "<th>eps=1</th>" in text and "Gradient-masking checks" in text and 'aria-label="ROC curve"' in text
    auc = float(re.search(r"AUC (\d\.\d+) \(12 patches\)", text).group(1))
    assert auc == pytest.approx(result["detection"]["clean"]["auc"], abs=1e-3)   # same clean scores as eval's


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                              ".ci/run installs it): the HTML report is not checked in a browser")
def test_eval_report_renders_in_chromium(eval_report):
    page = eval_report / "eval.html"
    dom = chromium(page, eval_report / "profile-dom", "--dump-dom")
    assert dom.returncode == 0 and console_messages(dom.stderr) == [], dom.stderr[-2000:]
    assert 'data-report-ready="12"' in dom.stdout and "data-js-error=" not in dom.stdout
    shot = artifacts() / "eval_report.png"
    res = chromium(page, eval_report / "profile-shot", "--window-size=1280,2400", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]


def test_heatmap_png_has_the_reports_scale_and_a_legend():
    from recapfast.reporting.html_report import heatmap_figure

    img = np.full((40, 50, 3), 100, np.uint8)
    fig = heatmap_figure(img, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], 16, 0.5, "x.png: mean 0.500")
    assert fig.shape == (40 + 64, 420, 3)
    assert (fig[:40, :50] == heatmap_array(img, [[0.0] * 3, [1.0] * 3], 16)).all()       # same picture
    bar = fig[40 + 4 + 16 + 5, 4:204]                                                     # the colour bar row
    assert tuple(bar[0]) == (33, 102, 172) and tuple(bar[-1]) == (178, 24, 43)
    assert (fig[40:, :] != 255).any(axis=2).sum() > 500                                   # text and swatches drawn

"""The README's two commands stay true: CI runs exactly the README's test command."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.strip() == "```bash":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_quick_start_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(quick)
    assert len(blocks) == 2, "the quick start is exactly two commands"
    main_job, test_cmd = blocks
    assert "pip install torch==2.13.0" in main_job and main_job.rstrip().endswith("recapfast demo")
    assert "pytest" in test_cmd and "--no-deps torchattacks" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_performance_claims_point_at_committed_results():
    readme = (ROOT / "README.md").read_text()
    perf = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    links = [part.split(")", 1)[0] for part in perf.split("](")[1:]]
    assert links, "the performance section names its results files"
    for link in links:
        assert (ROOT / link).is_file(), link


# ------------------------------------------------------------------ the landing page and the docs pages it links

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    heads, inside = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            heads.add(_slug(line.lstrip("#")))
    return heads


def _links(page: Path) -> list[str]:
    import re

    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_pages_are_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300, "README is a landing page: <= 300 lines"
    for page in PAGES[1:]:
        assert len(page.read_text().splitlines()) <= 400, f"{page.name}: a docs page stays <= 400 lines"


def test_every_relative_link_resolves():
    """README and docs/*.md: every relative link names an existing file, and its #anchor an existing heading."""
    checked = 0
    for page in PAGES:
        for link in _links(page):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.name}: {link} does not exist"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{page.name}: {link}: no heading with that anchor"
            checked += 1
    assert checked >= 20


def _commands_shown(text: str) -> set[str]:
    import re

    code = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    code += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return {m for chunk in code for m in re.findall(r"(?:^|[\s&;(])recapfast ([a-z]+)\b", chunk, flags=re.M)}


def test_every_command_the_readme_shows_exists():
    """`recapfast X --help` works for every X the README shows (code blocks and inline code)."""
    from typer.testing import CliRunner

    from recapfast.cli import app

    shown = _commands_shown((ROOT / "README.md").read_text())
    assert {"demo", "screen", "eval"} <= shown, shown
    runner = CliRunner()
    for name in sorted(shown):
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0, f"recapfast {name} --help: {res.output}"
        assert "Usage" in res.output


def test_the_trust_example_on_its_page_is_the_generated_one():
    """docs/robustness.md holds docs/trust/example.md verbatim between its markers (make_example.py writes both)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example", ROOT / "docs" / "trust" / "make_example.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    page = (ROOT / "docs" / "robustness.md").read_text()
    assert mod.page_block(page) == (ROOT / "docs" / "trust" / "example.md").read_text().strip() + "\n"
    assert mod.page_block(mod.replace_block(page, "NEW\n")) == "NEW\n"


def test_the_walkthrough_output_is_what_screen_prints_today():
    """The README's screen output keeps the table's header, the legend and the summary line of the current code."""
    from recapfast.reporting.screen_table import HEADER, fragile_line

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Screen your own photos", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    assert lines[0].startswith("15 file(s): 15 screened, 0 error(s);")
    assert lines[2].split() == [h for h in HEADER]
    assert fragile_line(1.0) in block
    assert lines[-1] == "all records: results.jsonl; summary: results.summary.json"

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

"""Repository promises: the README's quick start is what CI runs, and the examples carry their attribution."""

from __future__ import annotations

import csv
import re

from conftest import REPO_ROOT


def _readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    demo, tests = commands
    assert "python3 -m venv .venv" in demo and "python3 -m venv .venv" in tests
    assert "pytest" in tests
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the README's test command must appear verbatim as a line of .ci/run"


def test_examples_are_redistributable_and_attributed():
    rows = list(csv.DictReader((REPO_ROOT / "examples" / "examples.csv").open()))
    assert len(rows) >= 4
    readme = (REPO_ROOT / "examples" / "README.md").read_text()
    for row in rows:
        assert (REPO_ROOT / "examples" / row["file"]).is_file()
        assert row["license"].startswith(("CC BY", "NIH")) and "NC" not in row["license"], row
        assert row["file"] in readme

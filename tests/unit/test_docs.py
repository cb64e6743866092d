"""The README stays short and points into the manual; the manual's generated parts cover the code."""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pytest

from dpnbids.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def test_readme_is_short_and_links_only_to_pages_that_exist():
    text = README.read_text()
    assert len(text.encode()) <= 10_000, "README.md is over 10 KB: move the detail into docs/"
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 15  # every page of the manual is reachable from the README
    assert not [link for link in links if not (REPO / link).is_file()]
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages - {Path(link).name for link in links} <= {"index.md"}


def test_readme_commands_are_the_ones_ci_runs():
    text = README.read_text()
    block = re.search(r"## The two commands\n+```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    assert commands == [["bash", "tools/demo.sh"], ["bash", "tools/test.sh"]]
    assert "bash tools/test.sh" in (REPO / ".ci" / "run").read_text()
    test_sh = (REPO / "tools" / "test.sh").read_text()
    pytest_line = next(line for line in test_sh.splitlines() if "-m pytest" in line)
    assert '-m ""' in pytest_line  # every tier, whatever pyproject's addopts select
    assert "ruff check" in test_sh and "sphinx -W" in test_sh


def test_option_tables_render_every_option_of_the_parser():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from options_table import render
    finally:
        sys.path.remove(str(REPO / "tools"))
    table = render()
    for action in build_parser()._actions:  # argparse has no public list of its actions
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        assert f"`{action.option_strings[0]}`" in table, action.option_strings
        if action.help:
            assert action.help.replace("%%", "%").replace("|", "\\|")[:40] in table


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "results").glob("*.md")),
                         ids=lambda p: p.stem)
def test_each_measurement_names_its_machine_date_and_command(path):
    text = path.read_text()
    assert re.match(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.md$", path.name)
    assert text.startswith("# ")
    for field in ("**Machine:**", "**Date:**", "**Command:**"):
        assert field in text, f"{path.name} lacks {field}"
    assert path.name[:10] in text.split("**Command:**")[0]  # the file's date is its date


def test_help_texts_point_to_no_file_the_image_leaves_out():
    helps = " ".join(a.help or "" for a in build_parser()._actions)
    assert not re.search(r"\b[\w/.-]+\.(md|rst|py|sh)\b", helps), helps

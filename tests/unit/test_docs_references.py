"""The README and the docs point only at files that exist, and never at our issue tracker's
numbers (a reader of the repository has neither the tracker nor the files around it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "agent_kit" / "README.md",
                *(ROOT / "docs").rglob("*.md")])
MD_MENTION = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")
RELATIVE_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)")
ISSUE_NUMBER = re.compile(r"\bissues? #?\d+|\bthe [a-z]+ issue\b", re.IGNORECASE)


def _exists(page: Path, mention: str) -> bool:
    return (ROOT / mention).exists() or (page.parent / mention).exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_page_names_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    named = {*MD_MENTION.findall(text), *RELATIVE_LINK.findall(text)}

    missing = sorted(m for m in named if not _exists(page, m))

    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_speaks_of_issue_numbers(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()

    found = [f"{n}: {line.strip()}" for n, line in enumerate(lines, 1) if ISSUE_NUMBER.search(line)]

    assert found == []


def test_ci_runs_the_readme_s_test_command() -> None:
    """CI calls the test command the README gives a fresh machine, word for word."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)\n```", readme, re.DOTALL)
    (command,) = [block for block in blocks if "requirements/test.lock" in block]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci

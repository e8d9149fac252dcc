"""docs/configuration.md lists every setting with its default and a description, checked against
the settings classes (``python -m broker.settings_doc`` prints the same report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.settings_doc import DOC, check, check_example, suggestions
from broker.settings_fields import settings_fields

PAGES = sorted(DOC.parent.glob("*.md"))


def _report(problems: list[str]) -> str:
    pasted = "\n".join(suggestions(problems))
    return "\n".join(problems) + (f"\n\nLines to add:\n{pasted}" if pasted else "")


def test_the_configuration_page_documents_every_setting_with_its_default() -> None:
    problems = check(DOC.read_text(encoding="utf-8"))

    assert problems == [], _report(problems)


@pytest.mark.parametrize("page", [p for p in PAGES if p != DOC], ids=lambda p: p.name)
def test_other_pages_show_only_real_settings_and_say_when_a_value_is_not_the_default(
    page: Path,
) -> None:
    problems = check_example(page.read_text(encoding="utf-8"))

    assert problems == [], "\n".join(problems)


def test_the_settings_the_issue_found_missing_are_known_to_the_check() -> None:
    paths = {".".join(s.path) for s in settings_fields()}

    assert {
        "llm.max_tokens_limit", "llm.bytes_per_token", "llm.rate_per_s", "llm.burst",
        "llm.reservation_ttl_s", "budgets.expire_interval_s", "budgets.edge_rates.*.rate_per_s",
        "audit.export.positions", "audit.export.positions_path", "audit.export.positions_key",
        "audit.export.poll_interval_s",
    } <= paths


def _doc_with(old: str, new: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    assert old in text
    return text.replace(old, new, 1)


def test_a_missing_setting_is_reported_with_a_line_to_paste() -> None:
    text = _doc_with("bytes_per_token = 3.0", "")

    problems = check(text)

    assert problems == ["missing: [llm] bytes_per_token = 3.0"]
    (line,) = suggestions(problems)
    assert line.startswith("[llm]  bytes_per_token = 3.0  # Bytes of request body")


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("port = 8080 ", "port = 9090 ",
         "wrong default: [server] port = 9090 (the default is 8080)"),
        ("rate_per_s = 0.0            # calls per second per agent (0: no rate limit)",
         "rate_per_s = 2.0            # calls per second per agent (0: no rate limit)",
         "wrong default: [llm] rate_per_s = 2.0 (the default is 0.0)"),
        ("workers = 1                 # uvicorn worker processes; each is stateless",
         "workers = 1", "no description: [server] workers"),
        ("workers = 1 ", 'log_format = "json"         # not a setting\nworkers = 1 ',
         "not a setting: [server] log_format"),
    ],
)
def test_drift_is_reported(old: str, new: str, problem: str) -> None:
    assert check(_doc_with(old, new)) == [problem]

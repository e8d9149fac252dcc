"""The broker's log lines: one shape for every line, whoever logged it."""

from __future__ import annotations

import json
import logging
import re

import pytest

from broker.observability.logs import JsonLineFormatter, configure_logging, log_fields

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _line(name: str, message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, (), None)
    record.created = 1795633412.327
    for key, value in extra.items():
        setattr(record, key, value)
    parsed: dict[str, object] = json.loads(JsonLineFormatter().format(record))
    return parsed


def test_a_plain_line_has_ts_level_logger_message() -> None:
    assert _line("a2a_broker.policy", "policy loaded") == {
        "ts": "2026-11-25T19:03:32.327Z",
        "level": "info",
        "logger": "a2a_broker.policy",
        "message": "policy loaded",
    }


def test_a_structured_line_has_its_fields_at_the_top_level() -> None:
    fields = {"event": "mediated", "caller": "planner", "status": 200}

    line = _line("a2a_broker.access", "mediated", fields=fields)

    assert line == {"ts": "2026-11-25T19:03:32.327Z", "level": "info",
                    "logger": "a2a_broker.access", **fields}


def test_other_libraries_lines_join_the_family_and_keep_their_name() -> None:
    server = _line("uvicorn.error", "Started server process")
    other = _line("asyncio", "Unclosed client session")

    assert (server["logger"], server["source"]) == ("a2a_broker.server", "uvicorn.error")
    assert (other["logger"], other["source"]) == ("a2a_broker.asyncio", "asyncio")
    assert ISO_MS.match(str(server["ts"])) and ISO_MS.match(str(other["ts"]))


def test_log_fields_writes_one_structured_record() -> None:
    logger = logging.getLogger("a2a_broker.test")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_fields(logger, {"event": "llm_call", "status": 200})
    finally:
        logger.removeHandler(handler)

    (record,) = records
    formatted = json.loads(JsonLineFormatter().format(record))
    assert formatted["event"] == "llm_call" and "message" not in formatted


def test_configured_lines_keep_their_shape_without_caller_thread_or_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``configure_logging`` stops gathering what no line shows; the lines are unchanged."""
    for flag in ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    configure_logging("info")
    logger = logging.getLogger("a2a_broker.test")
    log_fields(logger, {"event": "mediated", "caller": "planner", "status": 200})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    structured, failure = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert ISO_MS.match(structured.pop("ts")) and ISO_MS.match(failure.pop("ts"))
    assert structured == {"level": "info", "logger": "a2a_broker.test", "event": "mediated",
                          "caller": "planner", "status": 200}
    assert failure.pop("exception").endswith("ValueError: boom")
    assert failure == {"level": "error", "logger": "a2a_broker.test", "message": "it failed"}

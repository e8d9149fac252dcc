"""The broker's log lines: one shape for every line, whoever logged it."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from typing import Any

import pytest

from broker.observability import logs
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


class _Pass(logging.Filter):
    """Lets every record through: its only effect is that a line must go through ``logging``."""


def test_a_structured_line_written_directly_is_the_line_logging_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the broker serves (one root handler, installed by ``configure_logging``), a structured
    line skips ``logging``'s record and dispatch: the same bytes reach the same stream."""
    for flag in ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logs, "_configured", None)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(time, "time", lambda: 1795633412.327)
    configure_logging("info")
    logger = logging.getLogger("a2a_broker.access")
    fields = {"event": "mediated", "caller": "planner", "chain": ["a", "b"], "status": 200}
    sent: list[logging.LogRecord] = []
    monkeypatch.setattr(logging.Logger, "handle", _counting(logging.Logger.handle, sent))

    log_fields(logger, fields)  # direct
    logger.addFilter(_Pass())
    try:
        log_fields(logger, fields)  # through logging (a filter is on the way)
    finally:
        logger.removeFilter(logger.filters[-1])

    direct, through = stream.getvalue().splitlines(keepends=True)
    assert direct == through and len(sent) == 1  # only the second made a LogRecord
    assert json.loads(direct) == {"ts": "2026-11-25T19:03:32.327Z", "level": "info",
                                  "logger": "a2a_broker.access", **fields}


def _counting(handle: Any, sent: list[logging.LogRecord]) -> Any:
    def counted(self: logging.Logger, record: logging.LogRecord) -> None:
        sent.append(record)
        handle(self, record)

    return counted


def _unconfigured_root(monkeypatch: pytest.MonkeyPatch, stderr: Any) -> logging.Logger:
    """The root logger as before ``configure_logging`` (restored after the test), with
    ``stderr`` as the stream the configured handler will write to."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logs, "_configured", None)
    monkeypatch.setattr(sys, "stderr", stderr)
    return root


def test_a_line_goes_through_logging_when_anything_else_could_see_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = _unconfigured_root(monkeypatch, io.StringIO())
    logger = logging.getLogger("a2a_broker.access")
    assert logs._direct_route(logger) is None  # not configured: a tool, a test
    configure_logging("info")
    assert logs._direct_route(logger) is not None
    extra = logging.Handler()
    for holder in (logger, logging.getLogger("a2a_broker"), root):
        holder.addHandler(extra)
        try:
            assert logs._direct_route(logger) is None  # one more handler sees it
        finally:
            holder.removeHandler(extra)
    monkeypatch.setattr(logger, "propagate", False)
    assert logs._direct_route(logger) is None  # logging's last resort would write it
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(root, "level", logging.WARNING)
    logger.manager._clear_cache()
    assert logs._direct_route(logger) is None  # not enabled: nothing is written


def test_a_failed_direct_write_is_reported_as_logging_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = _unconfigured_root(monkeypatch, _Broken())
    configure_logging("info")
    handler = root.handlers[0]
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)

    log_fields(logging.getLogger("a2a_broker.access"), {"event": "mediated", "status": 200})

    (record,) = reported
    assert record.name == "a2a_broker.access" and record.getMessage() == "mediated"


class _Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("the stream is gone")

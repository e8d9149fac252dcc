"""Logging set-up: one JSON object a line on stderr, the same shape for every line.

Every line starts with ``ts`` (ISO-8601 UTC with milliseconds), ``level`` and ``logger``. The
logger is always in the ``a2a_broker`` family: the broker's own loggers are named so, uvicorn's
lines are ``a2a_broker.server`` and any other library's ``a2a_broker.<library>``, with the
library's own logger name in ``source``. A plain line then has ``message`` (and ``exception``
with a traceback); a structured line (the per-request ``mediated`` and ``llm_call`` lines) has
its fields at the top level instead, passed as ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

import msgspec

ROOT_LOGGER = "a2a_broker"
_encoder = msgspec.json.Encoder()


# The handler ``configure_logging`` installed on the root logger, and its formatter.
_configured: tuple[logging.StreamHandler[Any], JsonLineFormatter] | None = None


def log_fields(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """Write one structured INFO line whose members are ``fields`` (after ts/level/logger).

    Where the line can only reach the handler ``configure_logging`` installed (the broker as it
    serves: one root handler, nothing else on the way), it is formatted and written here, the
    same bytes with the same lock and flush, without the ``LogRecord`` and the handler
    dispatch of ``logging``, which cost several times the line itself (a request's access
    line, decision 0093). Anywhere else (another handler, a filter, a test's capture) it goes
    through ``logging`` as any line does.
    """
    route = _direct_route(logger)
    if route is None:
        logger.info(str(fields.get("event", "")), extra={"fields": fields})
        return
    handler, formatter = route
    created = time.time()
    try:
        line = formatter.line(logger.name, logging.getLevelName(logging.INFO), created, fields)
        with handler.lock:  # type: ignore[union-attr]  # created with the handler
            handler.stream.write(line + handler.terminator)
            handler.flush()
    except RecursionError:  # as logging.StreamHandler.emit
        raise
    except Exception:  # as logging.StreamHandler.emit: reported, never raised
        record = logger.makeRecord(
            logger.name, logging.INFO, "(unknown file)", 0, str(fields.get("event", "")), (),
            None, extra={"fields": fields},
        )  # fmt: skip
        record.created = created
        handler.handleError(record)


def _direct_route(
    logger: logging.Logger,
) -> tuple[logging.StreamHandler[Any], JsonLineFormatter] | None:
    """The configured handler and its formatter, if an INFO line of ``logger`` would reach that
    handler and no other, unfiltered and made by the standard ``LogRecord``; else None."""
    route = _configured
    if route is None or logger.disabled or logger.filters:
        return None
    handler, formatter = route
    plain = (
        handler.formatter is formatter
        and not handler.filters
        and handler.level <= logging.INFO
        and logging.getLogRecordFactory() is logging.LogRecord
        and logger.isEnabledFor(logging.INFO)
    )
    if not plain:
        return None
    node: logging.Logger | None = logger
    while node is not None:  # as Logger.callHandlers walks it
        if node.handlers:
            only = len(node.handlers) == 1 and node.handlers[0] is handler
            return route if only and node.parent is None else None
        if not node.propagate:
            return None  # no handler at all: logging's last resort
        node = node.parent
    return None


class JsonLineFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and not record.exc_info:
            return self.line(record.name, record.levelname, record.created, fields)
        entry = self._entry(record.name, record.levelname, record.created)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()

    def line(self, name: str, levelname: str, created: float, fields: dict[str, Any]) -> str:
        """The line of a structured record (no exception) of logger ``name``."""
        entry = self._entry(name, levelname, created)
        entry.update(fields)
        return _encoder.encode(entry).decode()

    def _entry(self, name: str, levelname: str, created: float) -> dict[str, object]:
        logger, source = _family_name(name)
        entry: dict[str, object] = {
            "ts": self.iso_time(created),
            "level": levelname.lower(),
            "logger": logger,
        }
        if source:
            entry["source"] = source
        return entry

    def iso_time(self, created: float) -> str:
        """``2026-12-05T13:25:21.692Z``; the seconds part is formatted once per second."""
        second, millis = divmod(round(created * 1000), 1000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{millis:03d}Z"


@functools.lru_cache(maxsize=1024)  # a process has a few dozen logger names
def _family_name(name: str) -> tuple[str, str]:
    """The logger name to show, and the original name when it had to be mapped."""
    if name == ROOT_LOGGER or name.startswith(ROOT_LOGGER + "."):
        return name, ""
    if name == "uvicorn" or name.startswith("uvicorn."):
        return f"{ROOT_LOGGER}.server", name
    return f"{ROOT_LOGGER}.{name.split('.', maxsplit=1)[0]}", name


def configure_logging(level: str) -> None:
    # A line names no thread, process or source position: do not gather them for each record.
    # Walking the stack for the caller and asking for the thread and process were half the
    # cost of a request's log line (7 of 15 µs).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # skips findCaller, as the logging module says one may
    global _configured  # noqa: PLW0603 - the one handler of the process, installed here
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonLineFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _configured = handler, formatter

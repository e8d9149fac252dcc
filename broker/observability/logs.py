"""Logging set-up: one JSON object a line on stderr, the same shape for every line.

Every line starts with ``ts`` (ISO-8601 UTC with milliseconds), ``level`` and ``logger``. The
logger is always in the ``a2a_broker`` family: the broker's own loggers are named so, uvicorn's
lines are ``a2a_broker.server`` and any other library's ``a2a_broker.<library>``, with the
library's own logger name in ``source``. A plain line then has ``message`` (and ``exception``
with a traceback); a structured line (the per-request ``mediated`` and ``llm_call`` lines) has
its fields at the top level instead, passed as ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

ROOT_LOGGER = "a2a_broker"
_encoder = msgspec.json.Encoder()


def log_fields(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """Write one structured INFO line whose members are ``fields`` (after ts/level/logger)."""
    logger.info(str(fields.get("event", "")), extra={"fields": fields})


class JsonLineFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        logger, source = _family_name(record.name)
        entry: dict[str, object] = {
            "ts": self.iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": logger,
        }
        if source:
            entry["source"] = source
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()

    def iso_time(self, created: float) -> str:
        """``2026-12-05T13:25:21.692Z``; the seconds part is formatted once per second."""
        second, millis = divmod(round(created * 1000), 1000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{millis:03d}Z"


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

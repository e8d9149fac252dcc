"""The interface every SIEM sink implements, and the JSON-lines sink for tests and debugging.

A sink's one promise: ``send`` returns only once the receiver acknowledged every item of the
batch, in order; otherwise it raises ``SinkUnavailableError`` and the exporter retries the same
batch. Backends beside this module: ``syslog.SyslogSink`` (RFC 5424 over TCP) and
``hec.HecSink`` (Splunk HTTP Event Collector).
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from pathlib import Path

from broker.audit.export.errors import SinkUnavailableError
from broker.audit.export.ocsf import ExportItem

__all__ = ["ExportItem", "JsonLinesSink", "Sink", "SinkUnavailableError"]


class Sink(ABC):
    """A receiver of OCSF events. ``name`` keys the exporter's saved position for this sink."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def send(self, batch: list[ExportItem]) -> None:
        """Deliver ``batch`` in order; return only once the receiver acknowledged all of it.

        Raises ``SinkUnavailableError`` on any failure (its ``delivered`` counts the leading
        items that were acknowledged). Never raises anything else for a transport problem.
        """

    async def aclose(self) -> None:  # noqa: B027 - sinks without resources need not override
        """Release connections; ``send`` may reopen them."""


class JsonLinesSink(Sink):
    """Appends each OCSF event as one JSON line to ``path``, fsynced before ``send`` returns."""

    def __init__(self, path: str | Path, *, name: str = "") -> None:
        super().__init__(name or f"jsonl:{path}")
        self.path = Path(path)

    async def send(self, batch: list[ExportItem]) -> None:
        data = b"".join(bytes(item.event_json) + b"\n" for item in batch)
        try:
            await asyncio.to_thread(self._append, data)
        except OSError as exc:
            raise SinkUnavailableError(f"cannot append to {self.path}: {exc}") from exc

    def _append(self, data: bytes) -> None:
        with self.path.open("ab") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

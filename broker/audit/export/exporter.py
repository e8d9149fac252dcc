"""The SIEM exporter: ships every replica chain of the audit log to one sink, in order, once.

Contract, per replica chain and sink:

- Records go out in seq order, in batches of at most ``batch_size``; none is skipped.
- The saved position moves only after the sink acknowledged the records up to it. A sink that
  is down makes the exporter retry the SAME batch with exponential backoff and jitter (capped
  at ``max_backoff_s``) until it is acknowledged, so an outage of the sink loses and repeats
  nothing.
- A crash (or ``stop``) of the exporter between the sink's acknowledgement and the position
  save re-sends that one batch after the restart: at-least-once across exporter crashes. Every
  event carries the record hash as its id so the SIEM can drop the copy.

Export runs beside the hot path: the broker starts it with ``start`` and ends it with ``stop``;
nothing the exporter does can fail or slow a request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from broker.audit.export.errors import SinkUnavailableError
from broker.audit.export.ocsf import ExportItem, export_item
from broker.audit.export.positions import PositionStore
from broker.audit.export.sinks import Sink
from broker.audit.log import AuditLog
from broker.audit.records import AuditRecord
from broker.background import BackgroundTasks

_log = logging.getLogger("a2a_broker.audit.export")
_T = TypeVar("_T")


class _StopRequestedError(Exception):
    """``stop`` was called while the exporter waited; unwinds to ``run``."""


class Exporter:
    """Exports ``log`` to ``sink``, keeping positions in ``positions`` under ``sink.name``."""

    def __init__(
        self,
        log: AuditLog,
        sink: Sink,
        positions: PositionStore,
        *,
        batch_size: int = 500,
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.1,
        poll_interval_s: float = 0.5,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.log, self.sink, self.positions = log, sink, positions
        self.batch_size = batch_size
        self.max_backoff_s, self.initial_backoff_s = max_backoff_s, initial_backoff_s
        self.poll_interval_s = poll_interval_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks = tasks if tasks is not None else BackgroundTasks()

    def start(self) -> None:
        """Run the exporter as a background task (of ``tasks``)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = self._tasks.spawn(self.run(), f"audit-export:{self.sink.name}")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the batch in hand (up to ``timeout_s``), then end; closes the sink."""
        self._stopping.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                done, _ = await asyncio.wait({task}, timeout=timeout_s)
                if not done:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            await self.sink.aclose()

    async def run(self) -> None:
        """Export until ``stop``; every failure is logged and retried, never raised."""
        failures = 0
        while not self._stopping.is_set():
            try:
                exported = await self.export_pass()
                failures = 0
            except _StopRequestedError:
                return
            except Exception:
                # The log or the position store failed: start the pass over from the saved
                # positions, which re-reads exactly the records not yet acknowledged.
                _log.exception("audit export to %s failed; retrying", self.sink.name)
                exported = 0
                failures += 1
            delay = self._backoff(failures) if failures else self.poll_interval_s
            if not exported and await self._wait_for_stop(delay):
                return

    async def export_pass(self) -> int:
        """Export every replica chain up to its current end; return how many records went out."""
        total = 0
        for replica in await self.log.replicas():
            total += await self._export_chain(replica)
        return total

    async def _export_chain(self, replica: str) -> int:
        position = await self._persist(partial(self.positions.load, self.sink.name, replica))
        exported = 0
        records = self.log.read(replica, after_seq=position)
        try:
            async for batch in _batches(_after(records, position), self.batch_size):
                await self._deliver(replica, batch)
                exported += len(batch)
        finally:
            if isinstance(records, AsyncGenerator):  # release the backend's file or cursor now
                await records.aclose()
        return exported

    async def _deliver(self, replica: str, batch: list[ExportItem]) -> None:
        """Send ``batch`` until the sink acknowledged all of it; save the position as it moves."""
        pending, attempt = batch, 0
        while pending:
            try:
                await self.sink.send(pending)
                delivered = len(pending)
            except SinkUnavailableError as exc:
                delivered = exc.delivered
                _log.warning("SIEM sink %s unavailable: %s", self.sink.name, exc)
            if delivered:
                last = pending[delivered - 1].seq
                await self._persist(partial(self.positions.save, self.sink.name, replica, last))
                pending, attempt = pending[delivered:], 0
            if pending:
                await self._pause(self._backoff(attempt))
                attempt += 1

    async def _persist(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run a position-store operation until it succeeds (a save must not be skipped)."""
        attempt = 0
        while True:
            try:
                return await operation()
            except Exception:
                _log.exception("audit export position store failed; retrying")
            await self._pause(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped at ``max_backoff_s``, with jitter over its upper half."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** min(attempt, 32))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography

    async def _pause(self, delay: float) -> None:
        if await self._wait_for_stop(delay):
            raise _StopRequestedError

    async def _wait_for_stop(self, delay: float) -> bool:
        """Wait ``delay`` seconds or until ``stop``; True if stopping."""
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True


async def _after(records: AsyncIterator[AuditRecord], position: int) -> AsyncIterator[ExportItem]:
    """The records past ``position`` as export items; a gap in seq is logged, not hidden."""
    expected = position + 1
    async for record in records:
        if record.seq < expected:
            continue
        if record.seq != expected:
            _log.warning(
                "audit chain %s jumps from seq %d to %d", record.replica, expected - 1, record.seq
            )
        expected = record.seq + 1
        yield export_item(record)


async def _batches(items: AsyncIterator[ExportItem], size: int) -> AsyncIterator[list[ExportItem]]:
    batch: list[ExportItem] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

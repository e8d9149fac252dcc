"""Group commit: the appends of one replica, written in call order, many per flush.

``append`` only queues and waits; one writer task takes everything queued, checks that it
continues the stored chain, writes it with a single flush (one fsync, one Redis round trip) and
then wakes every waiter. Appends that arrive while a flush runs form the next batch.

An append with ``durable=False`` (an outcome: nobody waits on it) is content with ``write``
where the log has one (the file: written, not fsynced); a batch of only such appends is
written, not flushed, and the next flush, which covers every record written before it, makes
them durable with its own.

A durable append that finds the committer idle (nothing queued, no batch being written, the
stored head known) is written by its caller, when the log can do so at once (``LoneFlush``):
after one loop turn in which other requests that are ready may append (they then queue behind
it, and everything goes the usual way, in call order), the caller writes and syncs its records
itself. At concurrency 1 that spares the hand-off to the writer task and back: two loop turns,
an event and a future per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from broker.audit.log import AuditChainGapError, AuditLogError
from broker.audit.records import AuditRecord, ChainHead
from broker.background import BackgroundTasks

FlushFn = Callable[[list[AuditRecord]], Awaitable[None]]
LoadHeadFn = Callable[[], Awaitable[ChainHead]]
_Entry = tuple[list[AuditRecord], "asyncio.Future[None]", bool]


class LoneFlush(Protocol):
    """A log that can flush a lone batch at once, without awaiting anything."""

    def lone_ready(self, count: int) -> bool:
        """Would a lone batch of ``count`` records be flushed at once now?"""

    def flush_lone(self, records: list[AuditRecord]) -> bool:
        """Flush ``records`` at once: True once done; False, having done nothing, when it
        cannot (they then go the usual way). Raises as a flush does."""


def follows(head: tuple[int, str], records: list[AuditRecord]) -> bool:
    """True if ``records`` continue ``head`` and each other (seq + 1, prev = previous hash)."""
    seq, prev = head
    for record in records:
        if record.seq != seq + 1 or record.prev != prev:
            return False
        seq, prev = record.seq, record.hash
    return True


class GroupCommitter:
    """Serialises and batches the appends of one replica; see ``AuditLog.append`` for the contract.

    ``flush`` writes a batch durably or raises; ``load_head`` reads the stored head (used before
    the first flush and after a failed one, when the stored state is uncertain).
    """

    def __init__(
        self,
        flush: FlushFn,
        load_head: LoadHeadFn,
        tasks: BackgroundTasks | None = None,
        *,
        write: FlushFn | None = None,
        lone: LoneFlush | None = None,
    ) -> None:
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._flush = flush
        self._lone = lone
        self._writing = False  # the writer task is writing a batch
        self._alone = False  # a caller is writing its records itself (``_append_alone``)
        self._write = write if write is not None else flush
        self._load_head = load_head
        self._pending: list[_Entry] = []
        self._durable: ChainHead | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def append(self, records: list[AuditRecord], *, durable: bool = True) -> None:
        """Queue ``records`` and wait until they are durable (``durable=False``: written, see
        the module's docstring). Raises ``AuditLogError``."""
        if self._closed:
            raise AuditLogError("the audit log is closed")
        if not records:
            return
        lone = self._lone
        if durable and lone is not None and self._idle() and lone.lone_ready(len(records)):
            await self._append_alone(records, lone)
        else:
            await self.append_nowait(records, durable=durable)

    def append_nowait(
        self, records: list[AuditRecord], *, durable: bool = True
    ) -> asyncio.Future[None]:
        """Queue ``records`` (not empty); the future says what ``append`` would have (done
        with ``AuditLogError`` if the committer is closed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            _fail(future, AuditLogError("the audit log is closed"))
            return future
        self._pending.append((records, future, durable))
        self._kick()
        return future

    @property
    def waiting(self) -> bool:
        """Are appends queued for the next batch?"""
        return bool(self._pending)

    async def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._closed = True
        if self._alone:
            await asyncio.sleep(0)  # a caller writing alone is done within the turn it is in
        if self._task is None and not self._pending:
            return  # every append was written by its caller: no writer was ever needed
        self._kick()  # the writer waits for a caller writing alone, which wakes it when done
        await self._task  # type: ignore[misc]  # _kick started it

    def _idle(self) -> bool:
        busy = self._pending or self._alone or self._writing or self._closed
        return not busy and self._durable is not None

    async def _append_alone(self, records: list[AuditRecord], lone: LoneFlush) -> None:
        """Write ``records`` in the caller's task if it is still alone after one loop turn and
        the log can flush them at once; else queue them ahead of what was appended meanwhile."""
        self._alone = True
        try:
            await asyncio.sleep(0)  # requests that are ready run first, and may append
        except BaseException:  # cancelled: the records go on all the same, as queued ones do
            self._queue_first(records)
            raise
        try:
            written = not self._pending and self._flush_alone(records, lone)
        finally:
            self._alone = False
            if self._pending or (self._closed and self._task is not None):
                self._kick()
        if not written:
            await self._queue_first(records)

    def _flush_alone(self, records: list[AuditRecord], lone: LoneFlush) -> bool:
        head = self._durable
        if head is None:
            return False
        if not follows(head, records):
            raise AuditChainGapError(
                f"seq {records[0].seq} does not continue the stored chain at seq {head.seq}"
            )
        try:
            if not lone.flush_lone(records):
                return False
        except Exception as exc:
            self._durable = None  # what reached storage is unknown: read it back next time
            raise _as_log_error(exc) from None
        self._durable = ChainHead(records[-1].seq, records[-1].hash)
        return True

    def _queue_first(self, records: list[AuditRecord]) -> asyncio.Future[None]:
        """Queue ``records`` ahead of those appended after them, and wake the writer."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.insert(0, (records, future, True))
        self._alone = False
        self._kick()
        return future

    def _kick(self) -> None:
        self._wake.set()
        if self._task is None:
            self._task = self._tasks.spawn(self._run(), "audit-commit")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._alone:
                continue  # a caller is writing alone: it wakes us when it is done
            batch, self._pending = self._pending, []
            if batch:
                self._writing = True
                try:
                    await self._commit(batch)
                finally:
                    self._writing = False
                if self._closed and not self._pending:
                    return
            elif self._closed:
                return

    async def _commit(self, batch: list[_Entry]) -> None:
        try:
            head = self._durable if self._durable is not None else await self._load_head()
        except Exception as exc:  # the store is down: every waiter learns it
            _fail_all(batch, _as_log_error(exc))
            return
        accepted: list[_Entry] = []
        seq, prev = head  # a ChainHead is made once per batch, not per record
        for entry in batch:
            records = entry[0]
            if follows((seq, prev), records):
                accepted.append(entry)
                seq, prev = records[-1].seq, records[-1].hash
            else:
                _fail(
                    entry[1],
                    AuditChainGapError(
                        f"seq {records[0].seq} does not continue the stored chain at seq {seq}"
                    ),
                )
        if not accepted:
            self._durable = head
            return
        head = ChainHead(seq, prev)
        # (Indexing, not ``*_`` unpacking: that builds a list per entry.)
        flush = self._flush if any(entry[2] for entry in accepted) else self._write
        try:
            await flush([record for entry in accepted for record in entry[0]])
        except Exception as exc:
            self._durable = None  # what reached storage is unknown: read it back next time
            _fail_all(accepted, _as_log_error(exc))
            return
        self._durable = head
        for _, future, _ in accepted:
            if not future.done():
                future.set_result(None)


def _as_log_error(exc: Exception) -> AuditLogError:
    if isinstance(exc, AuditLogError):
        return exc
    error = AuditLogError(f"audit write failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _fail(future: asyncio.Future[None], exc: AuditLogError) -> None:
    if not future.done():
        future.set_exception(exc)
        # The waiter may have been cancelled meanwhile; do not warn about a never-read exception.
        with contextlib.suppress(BaseException):
            future.exception()


def _fail_all(entries: list[_Entry], exc: AuditLogError) -> None:
    for _, future, _ in entries:
        _fail(future, exc)

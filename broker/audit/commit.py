"""Group commit: the appends of one replica, written in call order, many per flush.

``append`` only queues and waits; one writer task takes everything queued, checks that it
continues the stored chain, writes it with a single flush (one fsync, one Redis round trip) and
then wakes every waiter. Appends that arrive while a flush runs form the next batch.

An append with ``durable=False`` (an outcome: nobody waits on it) is content with ``write``
where the log has one (the file: written, not fsynced); a batch of only such appends is
written, not flushed, and the next flush, which covers every record written before it, makes
them durable with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from broker.audit.log import AuditChainGapError, AuditLogError
from broker.audit.records import AuditRecord, ChainHead
from broker.background import BackgroundTasks

FlushFn = Callable[[list[AuditRecord]], Awaitable[None]]
LoadHeadFn = Callable[[], Awaitable[ChainHead]]
_Entry = tuple[list[AuditRecord], "asyncio.Future[None]", bool]


def follows(head: ChainHead, records: list[AuditRecord]) -> bool:
    """True if ``records`` continue ``head`` and each other (seq + 1, prev = previous hash)."""
    for record in records:
        if record.seq != head.seq + 1 or record.prev != head.hash:
            return False
        head = ChainHead(record.seq, record.hash)
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
    ) -> None:
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._flush = flush
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
        if records:
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
        self._wake.set()
        if self._task is None:
            self._task = self._tasks.spawn(self._run(), "audit-commit")
        return future

    @property
    def waiting(self) -> bool:
        """Are appends queued for the next batch?"""
        return bool(self._pending)

    async def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit(batch)
            elif self._closed:
                return

    async def _commit(self, batch: list[_Entry]) -> None:
        try:
            head = self._durable if self._durable is not None else await self._load_head()
        except Exception as exc:  # the store is down: every waiter learns it
            _fail_all(batch, _as_log_error(exc))
            return
        accepted: list[_Entry] = []
        for records, future, durable in batch:
            if follows(head, records):
                accepted.append((records, future, durable))
                head = ChainHead(records[-1].seq, records[-1].hash)
            else:
                _fail(
                    future,
                    AuditChainGapError(
                        f"seq {records[0].seq} does not continue the stored chain at seq {head.seq}"
                    ),
                )
        if not accepted:
            self._durable = head
            return
        flush = self._flush if any(durable for *_, durable in accepted) else self._write
        try:
            await flush([record for records, *_ in accepted for record in records])
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

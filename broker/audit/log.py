"""Where audit records are kept: the ``AuditLog`` interface that every backend implements.

Contract (checked by tests/contract/test_audit_log.py for every backend):

- ``append(records)`` stores the records of one replica in the order given and returns only when
  they are durable (see each backend for what durable means). The first record must continue
  the stored head of its chain (``seq`` = head seq + 1, ``prev`` = head hash) and the rest must
  follow each other; otherwise nothing is written and ``AuditChainGapError`` is raised. On any
  failure ``AuditLogError`` is raised and the log holds what was stored before plus possibly
  some of these records (whole ones, in order): call ``head()`` to learn where it ends.
- ``append_staged(records)`` returns once the records would survive a crash of this process and
  hands back an awaitable that completes once they are durable (backends without such a stage
  return only when durable, with an awaitable that is already complete).
- Concurrent ``append`` calls are written in call order (so records sealed in order stay in
  order) and may share one flush (group commit).
- ``read(replica)`` yields one chain in ``seq`` order; ``read(None)`` merges every replica by
  ``ts_us``. ``read_raw`` yields the stored bytes of each record, for verification.
"""

from __future__ import annotations

import abc
import asyncio
import heapq
from collections.abc import AsyncIterator

from broker.audit.records import AuditRecord, ChainHead, decode_record


class AuditLogError(Exception):
    """The audit log could not be written or read. The broker must refuse (fail closed)."""


class AuditChainGapError(AuditLogError):
    """Records given to ``append`` do not continue the stored chain (a stale or second writer)."""


class AuditLog(abc.ABC):
    """Durable, append-only storage of per-replica audit chains."""

    # Does ``append_staged`` return before the records are durable? When it does not, a caller
    # may ``append`` instead and skip the future it would hand back, already complete.
    stages: bool = False

    @abc.abstractmethod
    async def append(self, records: list[AuditRecord]) -> None:
        """Store ``records`` (one replica, contiguous); durable when this returns."""

    async def append_written(self, records: list[AuditRecord]) -> None:
        """Append records nobody waits on (outcomes): a log whose durability costs a wait of its
        own (the file's fsync) may make them durable with the next append's. By default, as
        ``append``."""
        await self.append(records)

    def append_written_nowait(self, records: list[AuditRecord]) -> asyncio.Future[None]:
        """``append_written`` without waiting: the future completes (or fails with
        ``AuditLogError``) when it would have returned. Appends are ordered by this call, as
        by ``append``. By default a task runs ``append_written``."""
        return asyncio.ensure_future(self.append_written(records))

    async def append_staged(self, records: list[AuditRecord]) -> asyncio.Future[None]:
        """Store ``records`` at least as far as surviving this process; the awaitable returned
        completes (or raises ``AuditLogError``) once they are durable. Here: both at once."""
        await self.append(records)
        return done_future()

    @abc.abstractmethod
    def read_raw(self, replica: str, after_seq: int = 0) -> AsyncIterator[bytes]:
        """The stored line of each record of ``replica`` with seq > ``after_seq``, in order."""

    @abc.abstractmethod
    async def replicas(self) -> list[str]:
        """Every replica that has records, sorted."""

    @abc.abstractmethod
    async def head(self, replica: str) -> ChainHead | None:
        """The last stored record of ``replica`` (to resume its chain), or None if it has none."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Wait for pending appends, then release files and connections."""

    async def read(self, replica: str | None, after_seq: int = 0) -> AsyncIterator[AuditRecord]:
        """Records of ``replica`` in seq order, or of all replicas merged by time.

        Raises ``AuditLogError`` for a stored line that is not a record (run ``verify``).
        """
        if replica is not None:
            async for record in self._read_one(replica, after_seq):
                yield record
            return
        sources = [self._read_one(name, after_seq) for name in await self.replicas()]
        async for record in merge_by_time(sources):
            yield record

    async def _read_one(self, replica: str, after_seq: int) -> AsyncIterator[AuditRecord]:
        async for line in self.read_raw(replica, after_seq):
            try:
                record = decode_record(line)
            except ValueError as exc:
                raise AuditLogError(f"replica {replica}: unreadable record: {exc}") from exc
            if record.seq > after_seq:
                yield record


async def merge_by_time(sources: list[AsyncIterator[AuditRecord]]) -> AsyncIterator[AuditRecord]:
    """Merge per-replica streams (each in time order) into one, by (ts_us, replica, seq)."""
    heap: list[tuple[int, str, int, int, AuditRecord]] = []
    for index, source in enumerate(sources):
        await _push_next(heap, index, source)
    while heap:
        *_, index, record = heapq.heappop(heap)
        yield record
        await _push_next(heap, index, sources[index])


async def _push_next(
    heap: list[tuple[int, str, int, int, AuditRecord]],
    index: int,
    source: AsyncIterator[AuditRecord],
) -> None:
    record = await anext(source, None)
    if record is not None:
        heapq.heappush(heap, (record.ts_us, record.replica, record.seq, index, record))


def done_future() -> asyncio.Future[None]:
    """A future that is already complete."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def failed_future(exc: BaseException) -> asyncio.Future[None]:
    """A future that has already failed with ``exc``."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future

"""``AuditTrail``: what the pipeline calls. Seals a record, appends it durably, signs checkpoints.

``record(fields)`` returns only once the record (and a checkpoint, when one was due) is durable;
if the log cannot be written it raises ``AuditLogError`` and the caller must refuse the request
(fail closed). After a failure the trail re-reads the stored head before sealing again, so the
chain stays contiguous: records that were refused are simply not in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from broker.audit.chain import AuditChain
from broker.audit.log import AuditLog, AuditLogError
from broker.audit.records import CHECKPOINT_KIND, EMPTY_HEAD, AuditRecord
from broker.audit.witness import WitnessWriter
from broker.identity.keys import BrokerKeys


class AuditTrail:
    """One replica's chain bound to a log. Use from one event loop."""

    def __init__(
        self, log: AuditLog, chain: AuditChain, witness: WitnessWriter | None = None
    ) -> None:
        self.log = log
        self.chain = chain
        # Told each checkpoint once it is durable (kept outside the log's trust).
        self.witness = witness
        self._stale = False
        # Bumped on every resync: a failure of records sealed before it says nothing new.
        self._epoch = 0
        self._resync_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        log: AuditLog,
        replica: str,
        keys: BrokerKeys,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        *,
        witness: WitnessWriter | None = None,
    ) -> AuditTrail:
        """A trail that continues ``replica``'s stored chain. Raises ``AuditLogError``."""
        head = await log.head(replica) or EMPTY_HEAD
        chain = AuditChain(replica, keys, checkpoint_every, checkpoint_interval_s, head=head)
        return cls(log, chain, witness)

    async def record(self, fields: Mapping[str, Any]) -> AuditRecord:
        """Seal ``fields`` as the next record and wait until it is durable.

        Raises ``AuditLogError`` if it could not be stored (refuse the request), or
        ``AuditRecordError`` if ``fields`` are invalid (a bug in the caller).
        """
        if self._stale:
            await self._resync()
        records = self.chain.seal_with_checkpoint(fields)
        await self._append(records)
        return records[0]

    async def record_written(self, fields: Mapping[str, Any]) -> AuditRecord:
        """Like ``record``, for a record nobody waits on (an outcome): it may become durable
        with the next record's fsync (``AuditLog.append_written``). A checkpoint sealed with it
        is appended durably, since the witness notes a checkpoint only once it is on disk."""
        if self._stale:
            await self._resync()
        records = self.chain.seal_with_checkpoint(fields)
        if len(records) > 1:
            await self._append(records)
            return records[0]
        epoch = self._epoch
        try:
            await self.log.append_written(records)
        except AuditLogError:
            self._failed(epoch)
            raise
        return records[0]

    def record_written_nowait(
        self,
        fields: Mapping[str, Any],
        then: Callable[[asyncio.Future[None]], None] | None = None,
    ) -> asyncio.Future[None] | None:
        """``record_written`` without a task of its own: seal now, and return a future that
        completes (or fails with ``AuditLogError``) when it would have returned; ``then`` is
        called with it once done, after the trail has noted a failure (one callback where two
        cost two loop callbacks per record). None, with nothing sealed, when the stored head
        must be re-read first or a checkpoint is due with this record (appended durably): await
        ``record_written`` then. Raises ``AuditRecordError`` if ``fields`` are invalid."""
        if self._stale or self.chain.checkpoint_due(sealing=1):
            return None
        written = self.log.append_written_nowait([self.chain.seal(fields)])
        written.add_done_callback(partial(self._written_done, self._epoch, then))
        return written

    def _written_done(
        self,
        epoch: int,
        then: Callable[[asyncio.Future[None]], None] | None,
        done: asyncio.Future[None],
    ) -> None:
        if not done.cancelled() and done.exception() is not None:
            self._failed(epoch)
        if then is not None:
            then(done)

    async def record_staged(self, fields: Mapping[str, Any]) -> asyncio.Future[None] | None:
        """Like ``record``, but return once the log has the record as far as surviving this
        process; the future returned completes once it is durable (with ``AuditLogError`` if it
        cannot be made so; dropping the future unawaited is fine). None when the log does not
        stage: the record is durable already."""
        if self._stale:
            await self._resync()
        records = self.chain.seal_with_checkpoint(fields)
        epoch = self._epoch
        try:
            if not self.log.stages:  # durable once appended: no future to make and inspect
                await self.log.append(records)
                self._witness(records)
                return None
            synced = await self.log.append_staged(records)
        except AuditLogError:
            self._failed(epoch)
            raise
        if synced.done():
            self._sync_done(synced, epoch, records)
        else:
            synced.add_done_callback(lambda done: self._sync_done(done, epoch, records))
        return synced

    def _sync_done(
        self, done: asyncio.Future[None], epoch: int, records: list[AuditRecord]
    ) -> None:
        if done.cancelled():
            return
        if done.exception() is not None:
            self._failed(epoch)
        else:
            self._witness(records)

    def _witness(self, records: list[AuditRecord]) -> None:
        if self.witness is not None:
            for record in records:
                if record.kind == CHECKPOINT_KIND:
                    self.witness.note(record)

    def _failed(self, epoch: int) -> None:
        if epoch == self._epoch:
            self._stale = True

    async def checkpoint_if_due(self) -> AuditRecord | None:
        """Append a checkpoint if one is due (records unsigned for N records or T seconds)."""
        if self._stale:
            await self._resync()
        if not self.chain.checkpoint_due():
            return None
        record = self.chain.checkpoint()
        await self._append([record])
        return record

    async def run_checkpoints(self, period_s: float = 1.0) -> None:
        """Forever: every ``period_s``, sign what is due, so a quiet broker still checkpoints
        within T seconds of its last record. Cancel to stop; write failures are retried."""
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.checkpoint_if_due()
            except AuditLogError:
                continue  # requests are refused meanwhile; the next tick tries again

    async def close(self) -> None:
        """Sign the last records (best effort), then close the log."""
        try:
            if self.chain.unsigned and not self._stale:
                await self._append([self.chain.checkpoint()])
        except AuditLogError:
            pass
        finally:
            if self.witness is not None:
                await self.witness.flush_and_close()
            await self.log.close()

    async def _append(self, records: list[AuditRecord]) -> None:
        epoch = self._epoch
        try:
            await self.log.append(records)
        except AuditLogError:
            self._failed(epoch)
            raise
        self._witness(records)

    async def _resync(self) -> None:
        async with self._resync_lock:
            if self._stale:
                head = await self.log.head(self.chain.replica) or EMPTY_HEAD
                self.chain.reset(head)
                self._epoch += 1
                self._stale = False

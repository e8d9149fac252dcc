"""``RedisAuditLog``: one Redis Stream per replica, ``<prefix>:audit:<replica>``.

Each record is one stream entry with id ``<seq>-0`` (so stream order is chain order and Redis
itself refuses a second entry for a seq) and two fields: ``h`` (its hash) and ``r`` (its
canonical JSON). A batch is appended by one Lua script that first checks the batch continues
the stored head, so a stale or second writer for the same replica cannot fork the chain.

The stream key has no hash tag: one script touches one stream, so each replica's stream lives
in its own cluster slot and the replicas' chains spread over a cluster's nodes.

Durability is Redis's: ``append`` returns once Redis has applied the script. Without
persistence a Redis restart loses the log; with ``appendonly yes`` and ``appendfsync always``
each write is fsynced before Redis answers (recommended for production). ``wait_aof=True`` adds
``WAITAOF 1 0`` to the same round trip, so ``append`` fails unless the local AOF fsync is
confirmed (Redis >= 7.2 with AOF enabled); replication is asynchronous, so a failover can still
lose the last acknowledged writes unless replicas are also awaited. Streams are never trimmed:
retention is the operator's decision (export, then delete old entries with XTRIM MINID).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from broker.audit.commit import GroupCommitter
from broker.audit.log import (
    AuditChainGapError,
    AuditLog,
    AuditLogError,
    done_future,
    failed_future,
)
from broker.audit.records import EMPTY_HEAD, REPLICA_PATTERN, AuditRecord, ChainHead, encode_record
from broker.background import BackgroundTasks
from broker.settings import StoreSettings
from broker.stores.redis_client import REDIS_FAILURES, is_cluster, open_redis

_APPEND_LUA = resources.files("broker.audit").joinpath("audit_append.lua").read_text("utf-8")
_READ_COUNT = 2000
WAITAOF_TIMEOUT_MS = 2000
# A stream entry as redis-py returns it (the client does not decode responses).
_Entry = tuple[bytes, dict[bytes, bytes]]


class RedisAuditLog(AuditLog):
    """Audit chains in Redis Streams. Every method raises ``AuditLogError`` if Redis fails."""

    def __init__(
        self,
        target: str | StoreSettings,
        prefix: str,
        *,
        wait_aof: bool = False,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        """``target``: a standalone URL, or the ``[store]`` settings (any ``redis_mode``).
        ``tasks``: where the writers run (the runtime's; by default its own).

        Raises ``AuditLogError`` for ``wait_aof`` on Redis Cluster, where WAITAOF could not be
        sent to the node that holds the stream in the same round trip."""
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._client = open_redis(target)
        if wait_aof and is_cluster(self._client):
            raise AuditLogError("wait_aof is not available on Redis Cluster")
        self._script = self._client.register_script(_APPEND_LUA)
        self._prefix = prefix
        self._wait_aof = wait_aof
        self._committers: dict[str, GroupCommitter] = {}

    def stream_key(self, replica: str) -> str:
        if not REPLICA_PATTERN.match(replica):
            raise AuditLogError(f"invalid replica id {replica!r}")
        return f"{self._prefix}:audit:{replica}"

    async def append(self, records: list[AuditRecord]) -> None:
        if records:
            await self._committer_of(records).append(records)

    def append_written_nowait(self, records: list[AuditRecord]) -> asyncio.Future[None]:
        if not records:
            return done_future()
        try:
            committer = self._committer_of(records)
        except AuditLogError as exc:
            return failed_future(exc)
        return committer.append_nowait(records)

    def _committer_of(self, records: list[AuditRecord]) -> GroupCommitter:
        replica = records[0].replica
        if any(record.replica != replica for record in records):
            raise AuditLogError("one append holds records of one replica")
        committer = self._committers.get(replica)
        if committer is None:
            committer = self._committers[replica] = self._committer(replica)
        return committer

    def _committer(self, replica: str) -> GroupCommitter:
        key = self.stream_key(replica)

        async def flush(records: list[AuditRecord]) -> None:
            await self._flush(key, records)

        async def load_head() -> ChainHead:
            return await self.head(replica) or EMPTY_HEAD

        return GroupCommitter(flush, load_head, self._tasks)

    async def _flush(self, key: str, records: list[AuditRecord]) -> None:
        first = records[0]
        args: list[Any] = [first.seq - 1, first.prev]
        for record in records:
            args += [record.seq, record.hash, encode_record(record)]
        try:
            results = await self._append(key, args)
        except REDIS_FAILURES as exc:
            raise AuditLogError(f"Redis audit append failed: {type(exc).__name__}: {exc}") from exc
        if int(results[0][0]) != 1:
            raise AuditChainGapError(f"{key} is at seq {results[0][1]}, not {first.seq - 1}")
        if self._wait_aof and int(results[1][0]) < 1:
            raise AuditLogError("Redis did not confirm the AOF fsync in time")

    async def _append(self, key: str, args: list[Any]) -> list[Any]:
        """The script's reply, and WAITAOF's after it in the same round trip if asked for."""
        if not self._wait_aof:
            return [await self._script(keys=[key], args=args)]
        async with self._client.pipeline(transaction=False) as pipe:
            await self._script(keys=[key], args=args, client=pipe)  # type: ignore[arg-type]
            pipe.execute_command("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)
            return await pipe.execute()

    async def read_raw(self, replica: str, after_seq: int = 0) -> AsyncIterator[bytes]:
        key = self.stream_key(replica)
        start = f"{after_seq + 1}-0"
        while True:
            try:
                entries: list[_Entry] = await self._client.xrange(  # type: ignore[assignment]
                    key, min=start, count=_READ_COUNT
                )
            except REDIS_FAILURES as exc:
                raise AuditLogError(f"Redis audit read failed: {exc}") from exc
            for _, fields in entries:
                yield fields[b"r"]
            if len(entries) < _READ_COUNT:
                return
            start = "(" + entries[-1][0].decode("ascii")

    async def replicas(self) -> list[str]:
        pattern = f"{self._prefix}:audit:*"
        offset = len(self._prefix) + len(":audit:")
        try:
            keys = [key async for key in self._client.scan_iter(match=pattern, _type="STREAM")]
        except REDIS_FAILURES as exc:
            raise AuditLogError(f"Redis audit listing failed: {exc}") from exc
        names = (key.decode("utf-8")[offset:] for key in keys)
        return sorted(name for name in names if REPLICA_PATTERN.match(name))

    async def head(self, replica: str) -> ChainHead | None:
        try:
            last: list[_Entry] = await self._client.xrevrange(  # type: ignore[assignment]
                self.stream_key(replica), count=1
            )
        except REDIS_FAILURES as exc:
            raise AuditLogError(f"Redis audit read failed: {exc}") from exc
        if not last:
            return None
        entry_id, fields = last[0]
        return ChainHead(int(entry_id.split(b"-")[0]), fields[b"h"].decode("ascii"))

    async def close(self) -> None:
        committers, self._committers = self._committers, {}
        for committer in committers.values():
            await committer.close()
        await self._client.aclose()

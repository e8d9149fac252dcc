"""The witness: each checkpoint's position, also written outside the log's trust (decision 0026).

A signed checkpoint proves every record up to it, but not that the log goes on *to* it: someone
able to rewrite the log can cut its tail (checkpoints included) and the rest still verifies.
So after every checkpoint is durable, the broker also writes ``{"replica", "seq", "hash",
"ts_us"}`` (the checkpoint record's own seq and hash) to a witness, and ``audit verify
--witness`` holds the log to the newest entry of each replica, as to a kept checkpoint: a log
that ends before it, or differs at it, is ``truncated`` (14).

- ``FileWitness``: ``<dir>/witness-<replica>.jsonl``, one line per checkpoint, appended and
  fsynced. Put the folder where whoever can rewrite the log cannot (another mount, an
  append-only file attribute, a host the broker only appends to).
- ``RedisWitness``: one hash, ``<prefix>:audit:witness``, replica -> the newest entry (a Lua
  script never lets it go back). For a broker whose log is a local file and whose store is Redis.

Writing is off the request path and best effort: a failed write is logged, and the next
checkpoint writes a newer entry. A witness can only raise alarms, never hide a cut: an entry
that names a record the log does not hold is reported, and removing entries only weakens it
back to the plain hash chain.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from broker.audit.log import AuditLogError
from broker.audit.records import REPLICA_PATTERN, AuditRecord, KeptCheckpoint
from broker.background import BackgroundTasks
from broker.settings import StoreSettings
from broker.stores.redis_client import REDIS_FAILURES, open_redis

log = logging.getLogger("a2a_broker.audit")
_QUEUE = 64


class WitnessEntry(msgspec.Struct, frozen=True, kw_only=True):
    replica: str
    seq: int
    hash: str
    ts_us: int

    def kept(self) -> KeptCheckpoint:
        return KeptCheckpoint(self.replica, self.seq, self.hash)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(WitnessEntry)


def entry_for(checkpoint: AuditRecord) -> WitnessEntry:
    return WitnessEntry(replica=checkpoint.replica, seq=checkpoint.seq, hash=checkpoint.hash,
                        ts_us=checkpoint.ts_us)  # fmt: skip


class Witness(abc.ABC):
    """Where checkpoint positions are kept. ``write`` raises ``AuditLogError``."""

    @abc.abstractmethod
    async def write(self, entry: WitnessEntry) -> None: ...

    @abc.abstractmethod
    async def latest(self) -> dict[str, KeptCheckpoint]:
        """The newest entry of each replica. Raises ``AuditLogError`` if unreadable."""

    async def close(self) -> None:
        return None


class FileWitness(Witness):
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, replica: str) -> Path:
        if not REPLICA_PATTERN.match(replica):
            raise AuditLogError(f"invalid replica id {replica!r}")
        return self.directory / f"witness-{replica}.jsonl"

    async def write(self, entry: WitnessEntry) -> None:
        try:
            await asyncio.to_thread(self._append, entry)
        except OSError as exc:
            raise AuditLogError(f"audit witness not written: {exc}") from exc

    def _append(self, entry: WitnessEntry) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(entry.replica), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, _ENCODER.encode(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    async def latest(self) -> dict[str, KeptCheckpoint]:
        return await asyncio.to_thread(self._latest)

    def _latest(self) -> dict[str, KeptCheckpoint]:
        files = [self.directory] if self.directory.is_file() else (
            sorted(self.directory.glob("witness-*.jsonl")) if self.directory.is_dir() else [])
        if not files:
            raise AuditLogError(f"no audit witness at {self.directory}")
        newest: dict[str, KeptCheckpoint] = {}
        for entry in (e for path in files for e in _entries(path)):
            if entry.replica not in newest or entry.seq > newest[entry.replica].seq:
                newest[entry.replica] = entry.kept()
        return newest


def _entries(path: Path) -> Iterator[WitnessEntry]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditLogError(f"cannot read audit witness {path}: {exc.strerror}") from exc
    lines = data.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield _DECODER.decode(line)
        except msgspec.DecodeError:
            if number == len(lines) and not data.endswith(b"\n"):
                continue  # torn by a crash mid-write: the entries before it stand
            raise AuditLogError(f"audit witness {path} line {number} is not an entry") from None


_SET_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local seq = tonumber(cjson.decode(current)['seq'])
  if seq >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class RedisWitness(Witness):
    def __init__(self, target: str | StoreSettings, prefix: str) -> None:
        self._client = open_redis(target)  # a standalone URL, or [store] in any redis_mode
        self._key = f"{prefix}:audit:witness"
        self._script = self._client.register_script(_SET_IF_NEWER)

    async def write(self, entry: WitnessEntry) -> None:
        try:
            await self._script(keys=[self._key], args=[entry.replica, entry.seq,
                                                       _ENCODER.encode(entry)])  # fmt: skip
        except REDIS_FAILURES as exc:
            raise AuditLogError(f"audit witness not written: {exc}") from exc

    async def latest(self) -> dict[str, KeptCheckpoint]:
        try:
            raw: dict[bytes, bytes] = await self._client.hgetall(self._key)  # type: ignore[assignment]
        except REDIS_FAILURES as exc:
            raise AuditLogError(f"audit witness unreadable: {exc}") from exc
        if not raw:
            raise AuditLogError(f"no audit witness at {self._key}")
        try:
            entries = [_DECODER.decode(value) for value in raw.values()]
        except msgspec.DecodeError as exc:
            raise AuditLogError(f"audit witness {self._key} holds a bad entry") from exc
        return {entry.replica: entry.kept() for entry in entries}

    async def close(self) -> None:
        await self._client.aclose()


class WitnessWriter:
    """Writes entries in the background, in order, newest wins: ``note`` never waits."""

    def __init__(self, witness: Witness, tasks: BackgroundTasks | None = None) -> None:
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self.witness = witness
        self._queue: asyncio.Queue[WitnessEntry] = asyncio.Queue(_QUEUE)
        self._task: asyncio.Task[None] | None = None

    def note(self, checkpoint: AuditRecord) -> None:
        if self._task is None:
            self._task = self._tasks.spawn(self._run(), "witness")
        with contextlib.suppress(asyncio.QueueFull):  # a later checkpoint supersedes these
            self._queue.put_nowait(entry_for(checkpoint))

    async def flush_and_close(self) -> None:
        """Write what is queued, then stop."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.witness.close()

    async def _run(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                await self.witness.write(entry)
            except AuditLogError as exc:
                log.error("checkpoint seq %d of %s not witnessed: %s", entry.seq,  # noqa: TRY400
                          entry.replica, exc)  # fmt: skip
            finally:
                self._queue.task_done()

"""``FileAuditLog``: one append-only JSON-lines file per replica, fsynced before acknowledging.

Layout: ``<directory>/audit-<replica>.jsonl``; each line is a record's canonical JSON. A batch is
written with one ``write`` and made durable with one ``fdatasync``: in the file's own thread,
so the event loop keeps serving and appends arriving meanwhile form the next batch; or, for a
small batch while batches are small on average, no other append is queued and fsyncs take
under ``INLINE_FSYNC_S``, on the event loop itself: when one request waits alone the thread
hop costs more CPU than the fsync, and there is nothing to batch. A failed write or fsync is
rolled back by truncating the file to its previous length.

Zero-filled space: with fsync on (and ``zeros``, the default), the file runs ahead of its
records by ``ZERO_CHUNK`` bytes of zeros, written and made durable before records are written
over them, so that a record's ``fdatasync`` has no file size or extent to journal (about half
the CPU and wall time of an append's on ext4; decision 0074). The records end at the first NUL
byte: readers stop there, and closing the log cuts the zeros off. A fill (``ZERO_CHUNK`` more
zeros) is written only once the previous one is covered by a completed fsync, so that after a
crash the records made durable reach into the last ``RECOVERY_SPAN`` bytes: readers look for the
first NUL there only, and a writer reopening the file cuts it there (a crash can leave pages of
records that were never fsynced, and so never acknowledged, after zeros: they go with it).

Durability: a record is on disk when ``append`` returns, unless the disk or its controller lies
about flushing. With ``staged=True`` (``[audit] durable_before = "reply"``) ``append_staged``
returns once the records are written to the file (they then survive a crash of the process, not
of the machine) with a future that completes at the next ``fdatasync``: one background syncer
covers every record written before it starts. A failed sync there is reported to its waiters
and not rolled back (later records may already follow in the file; the chain stays whole).
A crash mid-write can leave an incomplete last line (never an acknowledged one), and zeros after
the records; both are cut off when the file is next opened for writing. One process may write a
replica's file at a time (an advisory ``flock``); readers need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from broker.audit.commit import GroupCommitter
from broker.audit.log import AuditLog, AuditLogError, done_future, failed_future
from broker.audit.records import (
    EMPTY_HEAD,
    REPLICA_PATTERN,
    AuditRecord,
    ChainHead,
    decode_record,
    encode_record,
)
from broker.background import BackgroundTasks
from broker.observability.probes import audit_synced

_TAIL_BLOCK = 64 * 1024
# Zeros kept ahead of the records (fsync on), and how far before the end of a file a reader looks
# for the first NUL: a fill is written only when less than half a chunk is left and the previous
# fill is durable, so the records made durable reach past ``size - 2.5 * ZERO_CHUNK``.
ZERO_CHUNK = 1 << 20
RECOVERY_SPAN = 3 * ZERO_CHUNK
# A record appended with ``append_written`` is on disk at the next fsync, or this long after it
# was written if no other append asks for one first. The timer that sees to it syncs only if no
# fsync has begun since the oldest such record could be this old: while decisions are fsynced
# (every request at c=1), outcomes never need a sync of their own.
LAZY_SYNC_S = 0.05
_READ_BATCH = 4096
# A batch this small is fsynced on the event loop (no thread hop) while batches are this small
# on average and the disk is this fast (moving averages): at low concurrency nothing waits
# behind it (batches of several requests go to the thread, so that the loop keeps serving and
# the next batch grows).
INLINE_FSYNC_RECORDS = 2
INLINE_FSYNC_AVERAGE = 3.0
INLINE_FSYNC_S = 0.001
_EWMA_WEIGHT = 0.125


def audit_file(directory: Path, replica: str) -> Path:
    if not REPLICA_PATTERN.match(replica):
        raise AuditLogError(f"invalid replica id {replica!r}")
    return directory / f"audit-{replica}.jsonl"


class _ReplicaFile:
    """An open, locked file of one replica, with its group committer (and, when records are
    staged, its background syncer)."""

    def __init__(
        self, path: Path, fsync: bool, staged: bool, zeros: bool, tasks: BackgroundTasks
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._zeros = fsync and zeros  # zeros ahead of the records: only an fsync gains by them
        self._tasks = tasks
        self.fd = _open_locked(path, ZERO_CHUNK if self._zeros else 0)
        # Records end at ``_end``; zeros follow up to ``_size``. A fill is "covered" once an
        # fsync that started after it was written has returned (``_fills`` counts the fills and
        # a failed write, ``_covered`` what the last fsync to return covered).
        self._size = os.lseek(self.fd, 0, os.SEEK_END)
        self._end = _data_end(self.fd, self._size)
        self._fills = 0
        self._covered = 0
        # Staged: the committer only writes, and the syncer alone fsyncs.
        flush = self._write if staged else self._flush
        self.committer = GroupCommitter(
            flush, self._load_head, tasks, write=self._write_lazily, lone=None if staged else self
        )
        self._lazy_sync: asyncio.TimerHandle | None = None
        # ``time.monotonic`` of the latest write of records nobody waits on, and when the
        # latest fsync that succeeded began (everything written before then is durable).
        self._lazy_written = -math.inf
        self._synced_from = -math.inf
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._sync_wake = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._closing = False
        self._fsync_s = 0.0  # moving average of fsync wall times
        self._batch = 1.0  # moving average of records per fsynced batch
        self._fsync_thread = _FsyncThread(self.fd, self._took)

    def sync_soon(self) -> asyncio.Future[None]:
        """A future done once every record written so far is on disk (AuditLogError if not)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._fsync:
            future.set_result(None)
            return future
        self._sync_waiters.append(future)
        self._sync_wake.set()
        if self._syncer is None:
            self._syncer = self._tasks.spawn(self._sync_loop(), "audit-fsync")
        return future

    async def _sync_loop(self) -> None:
        while True:
            await self._sync_wake.wait()
            self._sync_wake.clear()
            waiters, self._sync_waiters = self._sync_waiters, []
            if not waiters:
                if self._closing:
                    return
                continue
            try:
                await self._datasync()
                audit_synced()
            except OSError as exc:
                failure = AuditLogError(f"audit fsync failed: {exc}")
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(failure)
                        with contextlib.suppress(BaseException):
                            waiter.exception()  # a waiter that went away must not warn
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, records: list[AuditRecord]) -> None:
        """Staged: into the file (the page cache) now; the syncer makes them durable."""
        await self._place(_lines(records))

    async def _write_lazily(self, records: list[AuditRecord]) -> None:
        """Written now; durable at the next fsync, which one asks for in ``LAZY_SYNC_S``."""
        await self._place(_lines(records))
        self._lazy_written = time.monotonic()
        if self._fsync and self._lazy_sync is None:
            loop = asyncio.get_running_loop()
            self._lazy_sync = loop.call_later(LAZY_SYNC_S, self._sync_lazy_writes)

    def _sync_lazy_writes(self) -> None:
        self._lazy_sync = None
        if self._closing or self._lazy_written < self._synced_from:
            return  # nothing written since the latest fsync began; the next write asks again
        # What an fsync that began at ``_synced_from`` missed was written after it: sync once
        # the oldest of it could be LAZY_SYNC_S old, unless another fsync comes first (at c=1
        # every request's decision does, so outcomes cost no thread hop and no fsync of their
        # own).
        due = self._synced_from + LAZY_SYNC_S - time.monotonic()
        if due > 0:
            self._lazy_sync = asyncio.get_running_loop().call_later(due, self._sync_lazy_writes)
        else:
            self.sync_soon()  # a failure is its own waiter's; nobody waits on this one

    async def _flush(self, records: list[AuditRecord]) -> None:
        data = _lines(records)
        # Writing to the page cache takes microseconds: do it here. A thread hop costs far more,
        # so only the fsync, which waits for the disk, runs in one.
        filled = self._fills
        offset = await self._place(data)
        if self._fsync:
            try:
                # A batch that wrote a fill syncs it off the loop (a chunk of zeros to write).
                if self._fills == filled and await self._alone(records):
                    self._timed_fdatasync()
                else:
                    await self._datasync()
            except OSError:
                self._roll_back(offset)
                raise
            audit_synced()

    async def _alone(self, records: list[AuditRecord]) -> bool:
        """Is this small batch alone, so that the fsync may run on the loop? Not while batches
        are larger on average (requests are in flight that would append during the fsync);
        and other requests that are ready to run get one turn first: if they append
        meanwhile, it is not."""
        small = len(records) <= INLINE_FSYNC_RECORDS
        self._batch += (len(records) - self._batch) * _EWMA_WEIGHT
        if not small or self._batch >= INLINE_FSYNC_AVERAGE or self._fsync_s >= INLINE_FSYNC_S:
            return False
        await asyncio.sleep(0)
        return not self.committer.waiting

    def lone_ready(self, count: int) -> bool:
        """Would ``_flush`` write a lone batch of ``count`` records and sync it on the loop,
        with no fill to add? (``GroupCommitter``'s caller then writes it itself.)"""
        if self._zeros and self._size - self._end < ZERO_CHUNK // 2 + 64 * 1024:
            return False  # a fill may fall due: the usual way, which writes it off the loop
        if not self._fsync:
            return True
        batch = self._batch + (count - self._batch) * _EWMA_WEIGHT
        small = count <= INLINE_FSYNC_RECORDS
        return small and batch < INLINE_FSYNC_AVERAGE and self._fsync_s < INLINE_FSYNC_S

    def flush_lone(self, records: list[AuditRecord]) -> bool:
        """``_flush`` of a lone batch that ``lone_ready`` let through, at once: written and
        synced on the loop (no thread hop), or False with nothing done if it needs a fill."""
        data = _lines(records)
        if self._zeros and self._size - self._end - len(data) < ZERO_CHUNK // 2:
            return False
        if self._fsync:
            self._batch += (len(records) - self._batch) * _EWMA_WEIGHT
        offset = self._end
        try:
            _pwrite_all(self.fd, memoryview(data), offset)
            self._end += len(data)
            self._size = max(self._size, self._end)
            if self._fsync:
                self._timed_fdatasync()
        except OSError:
            self._roll_back(offset)
            raise
        if self._fsync:
            audit_synced()
        return True

    def _timed_fdatasync(self) -> None:
        fills = self._fills
        began = time.monotonic()
        started = time.perf_counter()
        try:
            os.fdatasync(self.fd)
        finally:
            self._took(time.perf_counter() - started)
        self._covered = max(self._covered, fills)
        self._synced_from = max(self._synced_from, began)

    async def _datasync(self) -> None:
        """``fdatasync`` on the file's thread."""
        fills = self._fills
        began = time.monotonic()
        await self._fsync_thread.fdatasync()
        self._covered = max(self._covered, fills)
        self._synced_from = max(self._synced_from, began)

    async def _place(self, data: bytes) -> int:
        """Write ``data`` after the records (over zeros when there are some); return where it
        starts. A failed write is undone (``AuditLogError``-worthy ``OSError`` raised)."""
        offset = self._end
        view = memoryview(data)
        try:
            while True:
                room = self._size - self._end if self._zeros else len(view)
                piece = view[:room]
                if piece:
                    _pwrite_all(self.fd, piece, self._end)
                    self._end += len(piece)
                    self._size = max(self._size, self._end)
                    view = view[len(piece) :]
                if self._zeros and self._size - self._end < ZERO_CHUNK // 2:
                    await self._fill(must=bool(view))
                if not view:
                    return offset
        except OSError:
            self._roll_back(offset)
            raise

    async def _fill(self, *, must: bool) -> None:
        """Add ``ZERO_CHUNK`` zeros at the end, if the previous fill is durable (``must``: else
        wait for an fsync first); the next fsync makes them durable."""
        if self._covered < self._fills:
            if not must:
                return
            await self._datasync()
        _pwrite_all(self.fd, memoryview(bytes(ZERO_CHUNK)), self._size)
        self._size += ZERO_CHUNK
        self._fills += 1

    def _roll_back(self, offset: int) -> None:
        """Cut the file at ``offset`` (records and zeros after it go); the next fill waits for
        an fsync, since what is on disk is unknown."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, offset)
        self._end = self._size = offset
        self._fills += 1

    def _took(self, elapsed: float) -> None:
        self._fsync_s += (elapsed - self._fsync_s) * _EWMA_WEIGHT

    async def _load_head(self) -> ChainHead:
        return await asyncio.to_thread(_read_head, self.path) or EMPTY_HEAD

    async def close(self) -> None:
        await self.committer.close()
        if self._lazy_sync is not None:  # what was only written is made durable before closing
            self._lazy_sync.cancel()
            self._lazy_sync = None
            with contextlib.suppress(AuditLogError):
                await self.sync_soon()
        self._closing = True
        self._sync_wake.set()
        if self._syncer is not None:
            await self._syncer
        self._fsync_thread.stop()
        if self._size > self._end:  # the zeros go (no fsync: readers stop at them anyway)
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self._end)
        os.close(self.fd)


class _FsyncThread:
    """One thread, started at the first request, that fdatasyncs ``fd`` for the event loop.

    Cheaper than ``asyncio.to_thread`` per fsync (no executor work item, no chain of futures,
    no context copy): about 29 instead of 52 µs of CPU a round trip. ``took`` hears each
    fsync's wall time, on the loop."""

    def __init__(self, fd: int, took: Callable[[float], None]) -> None:
        self._fd = fd
        self._took = took
        self._requests: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def fdatasync(self) -> asyncio.Future[None]:
        """A future done once ``fdatasync`` returned (with its ``OSError`` if it failed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-fsync", daemon=True)
            self._thread.start()
        self._requests.put(future)
        return future

    def stop(self) -> None:
        """End the thread once the fsyncs asked for are done."""
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (future := self._requests.get()) is not None:
            started = time.perf_counter()
            failure: OSError | None = None
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                failure = exc
            elapsed = time.perf_counter() - started
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                future.get_loop().call_soon_threadsafe(self._settle, future, elapsed, failure)

    def _settle(
        self, future: asyncio.Future[None], elapsed: float, failure: OSError | None
    ) -> None:
        self._took(elapsed)
        if future.done():
            return
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)


class FileAuditLog(AuditLog):
    """Per-replica JSON-lines files in ``directory`` (created if missing).

    ``fsync=False`` skips the fsync (tests, benchmarks): records then survive a process crash
    but not a machine crash. ``staged=True`` lets ``append_staged`` return before the fsync.
    ``zeros=False`` appends to the file instead of writing over zeros kept ahead (a file that
    other tools follow as it grows, at the cost of an append's fsync; decision 0074).
    ``tasks``: where the writers run (the runtime's; by default its own).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: bool = True,
        staged: bool = False,
        zeros: bool = True,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self.directory = Path(directory)
        self._fsync = fsync
        self.stages = staged  # AuditLog.stages
        self._zeros = zeros
        self._files: dict[str, _ReplicaFile] = {}

    async def append(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        writer = self._writer(_one_replica(records))
        await writer.committer.append(records)
        if self.stages:
            await writer.sync_soon()

    async def append_written(self, records: list[AuditRecord]) -> None:
        """Append, durable at the next fsync (within ``LAZY_SYNC_S``): for records nobody waits
        on (outcomes). Survives a crash of the process once this returns."""
        if not records:
            return
        await self._writer(_one_replica(records)).committer.append(records, durable=False)

    def append_written_nowait(self, records: list[AuditRecord]) -> asyncio.Future[None]:
        if not records:
            return done_future()
        try:
            writer = self._writer(_one_replica(records))
        except AuditLogError as exc:
            return failed_future(exc)
        return writer.committer.append_nowait(records, durable=False)

    async def append_staged(self, records: list[AuditRecord]) -> asyncio.Future[None]:
        if not records:
            return done_future()
        writer = self._writer(_one_replica(records))
        await writer.committer.append(records)
        return writer.sync_soon() if self.stages else done_future()

    def _writer(self, replica: str) -> _ReplicaFile:
        writer = self._files.get(replica)
        if writer is None:
            path = audit_file(self.directory, replica)
            try:
                writer = _ReplicaFile(path, self._fsync, self.stages, self._zeros, self._tasks)
            except OSError as exc:
                raise AuditLogError(f"cannot open audit file {path}: {exc}") from exc
            self._files[replica] = writer
        return writer

    async def read_raw(self, replica: str, after_seq: int = 0) -> AsyncIterator[bytes]:
        path = audit_file(self.directory, replica)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AuditLogError(f"cannot read audit file {path}: {exc}") from exc
        try:
            while lines := await asyncio.to_thread(file.readlines, _READ_BATCH * 512):
                for line in lines:
                    if b"\0" in line:  # the zeros after the records (ZERO_CHUNK)
                        return
                    # An unterminated last line is being written (or torn): not a record yet.
                    if line.endswith(b"\n") and (not after_seq or _seq_of(line) > after_seq):
                        yield line[:-1]
        finally:
            file.close()

    async def replicas(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        names = (
            p.name[len("audit-") : -len(".jsonl")] for p in self.directory.glob("audit-*.jsonl")
        )
        return sorted(name for name in names if REPLICA_PATTERN.match(name))

    async def head(self, replica: str) -> ChainHead | None:
        return await asyncio.to_thread(_read_head, audit_file(self.directory, replica))

    async def close(self) -> None:
        files, self._files = self._files, {}
        for writer in files.values():
            await writer.close()


def _lines(records: list[AuditRecord]) -> bytes:
    """The stored lines of ``records``, each ended by a newline (``records`` not empty)."""
    return b"\n".join(map(encode_record, records)) + b"\n"


def _one_replica(records: list[AuditRecord]) -> str:
    replica = records[0].replica
    if len(records) > 1 and any(record.replica != replica for record in records):
        raise AuditLogError("one append holds records of one replica")
    return replica


def _open_locked(path: Path, zeros: int) -> int:
    """Open ``path`` for writing under an exclusive lock; cut zeros after the records and an
    incomplete last line, then add ``zeros`` zero bytes (durable before this returns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditLogError(f"another process is writing {path}") from None
    try:
        _cut_torn_tail(fd)
        if zeros:
            _pwrite_all(fd, memoryview(bytes(zeros)), os.lseek(fd, 0, os.SEEK_END))
            os.fsync(fd)
    except OSError:
        os.close(fd)
        raise
    if created:  # make the new directory entry itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return fd


def _cut_torn_tail(fd: int) -> None:
    """Cut what follows the records (zeros, and pages of records never fsynced after them),
    and end the file with a newline: complete a whole last record, or cut a partial one."""
    whole = os.lseek(fd, 0, os.SEEK_END)
    size = _data_end(fd, whole)
    if size < whole:
        os.ftruncate(fd, size)
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        if size < whole:
            os.fsync(fd)
        return
    end = _last_newline_end(fd, size)
    try:
        decode_record(os.pread(fd, size - end, end))
    except ValueError:
        os.ftruncate(fd, end)  # never acknowledged: its fsync had not returned
    else:
        _pwrite_all(fd, memoryview(b"\n"), size)
    os.fsync(fd)


def _data_end(fd: int, size: int) -> int:
    """Where the records of a file of ``size`` bytes end: its first NUL byte (records never
    hold one), looked for in the last ``RECOVERY_SPAN`` bytes, or ``size``."""
    pos = max(0, size - RECOVERY_SPAN)
    while pos < size:
        block = os.pread(fd, min(_TAIL_BLOCK, size - pos), pos)
        if not block:
            break
        index = block.find(b"\0")
        if index >= 0:
            return pos + index
        pos += len(block)
    return size


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 if there is none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL_BLOCK)
        block = os.pread(fd, pos - start, start)
        index = block.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        pos = start
    return 0


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _read_head(path: Path) -> ChainHead | None:
    """Seq and hash of the last record of ``path`` (None if it has none).

    An unterminated last line counts if it is a whole record, as ``_cut_torn_tail`` keeps it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        line = _last_record_line(fd)
    finally:
        os.close(fd)
    if line is None:
        return None
    try:
        record = decode_record(line)
    except ValueError as exc:
        raise AuditLogError(f"the last record of {path} is unreadable; run verify") from exc
    return ChainHead(record.seq, record.hash)


def _last_record_line(fd: int) -> bytes | None:
    size = _data_end(fd, os.lseek(fd, 0, os.SEEK_END))
    end = _last_newline_end(fd, size)
    if end < size:
        tail = os.pread(fd, size - end, end)
        with contextlib.suppress(ValueError):
            decode_record(tail)
            return tail
    if end == 0:
        return None
    start = _last_newline_end(fd, end - 1)
    return os.pread(fd, end - start, start)


def _seq_of(line: bytes) -> int:
    """The ``seq`` of a stored line without a full decode (0 if not found).

    The last ``"seq":`` is the record's own: later members are strings, whose quotes are escaped.
    """
    index = line.rfind(b'"seq":')
    if index < 0:
        return 0
    digits = line[index + 6 : index + 26]
    end = 0
    while end < len(digits) and 48 <= digits[end] <= 57:
        end += 1
    return int(digits[:end] or b"0")

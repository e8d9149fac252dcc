"""Writes that must land after the fact, retried in the background until the store answers.

Once an agent has answered, what the broker still has to write about that answer (the spend of
the call's budget reservation, the route of the task the agent created, the release of a fan-out
slot) must neither turn the answer into an error nor be lost to a store outage. Such a write is
handed to ``LateWrites``: the caller gets its answer at once, and one background loop per
instance retries the pending writes until they land.

While the store is down the loop probes it with one pending write every ``interval_s`` (not one
attempt per write: a thousand pending writes make five attempts a second, not five thousand);
once a probe lands, the rest are flushed a batch at a time (calls made in one loop turn share a
Redis pipeline, see ``stores.redis_batch``). A write that fails again goes to the back of the
queue, so one that can never land does not hold up the others. Every write must be idempotent:
a write whose reply was lost may have run, and it runs again.

A write is given up (and logged) once its deadline passes, or when the queue is full: the queue
holds what is pending, never more than ``max_pending`` writes. Pending writes live in this
process: a broker that dies during an outage loses them (docs/decisions/0020).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("a2a_broker.late_writes")

Attempt = Callable[[], Awaitable[object]]
GiveUp = Callable[[], object]

RETRY_INTERVAL_S = 0.2
MAX_PENDING = 100_000
FLUSH_BATCH = 64


@dataclass(slots=True)
class _Write:
    attempt: Attempt
    until: float
    what: str
    given_up: GiveUp | None


class LateWrites:
    """A queue of idempotent writes retried until they land; ``add`` never blocks or raises.

    ``retry_on``: the exceptions that mean "the store did not answer, try again later"; any
    other exception drops the write (logged with its traceback). ``clock`` dates deadlines.
    """

    def __init__(
        self,
        retry_on: tuple[type[BaseException], ...],
        *,
        interval_s: float = RETRY_INTERVAL_S,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._retry_on = retry_on
        self._interval_s = interval_s
        self._max_pending = max_pending
        self._clock = clock
        self._queue: deque[_Write] = deque()
        self._in_flight = 0
        self._worker: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Writes not landed yet (attempts in flight included)."""
        return len(self._queue) + self._in_flight

    def add(
        self, attempt: Attempt, *, until: float, what: str, given_up: GiveUp | None = None
    ) -> None:
        """Retry ``attempt`` until it returns, or until ``until`` (on ``clock``) has passed.

        ``what`` names the write in the log; ``given_up`` is called if it never lands.
        """
        if len(self._queue) >= self._max_pending:
            self._give_up(self._queue.popleft(), "the queue of late writes is full")
        self._queue.append(_Write(attempt, until, what, given_up))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="late-writes")

    async def close(self, timeout_s: float = 1.0) -> None:
        """Try once more to land what is pending (for at most ``timeout_s``), then stop."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._flush()
        if self._queue:
            log.error("%d late write(s) given up: the broker is shutting down", len(self._queue))
        while self._queue:
            write = self._queue.popleft()
            log.info("late write given up at shutdown: %s", write.what)
            if write.given_up is not None:
                write.given_up()

    async def _run(self) -> None:
        while self._queue:
            await asyncio.sleep(self._interval_s)
            self._drop_expired()
            if self._queue and await self._probe():
                await self._flush()

    async def _probe(self) -> bool:
        """Try the oldest write; True if the store answered."""
        return any(await self._attempt([self._queue.popleft()]))

    async def _flush(self) -> None:
        """Land the rest a batch at a time, until a whole batch fails (the store is down)."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(FLUSH_BATCH, len(self._queue)))]
            if not any(await self._attempt(batch)):
                return

    async def _attempt(self, batch: list[_Write]) -> list[bool]:
        """Try ``batch`` at once; what did not land goes back to the end of the queue (also
        if this is cancelled)."""
        landed = [False] * len(batch)
        self._in_flight = len(batch)
        try:
            landed = await asyncio.gather(*(self._landed(write) for write in batch))
        finally:
            self._in_flight = 0
            self._queue.extend(w for w, ok in zip(batch, landed, strict=True) if not ok)
        return landed

    async def _landed(self, write: _Write) -> bool:
        """Run one attempt: False if it should be retried, True once it is done with."""
        try:
            await write.attempt()
        except self._retry_on:
            return False
        except Exception:
            log.exception("late write dropped: %s", write.what)
        return True

    def _drop_expired(self) -> None:
        now = self._clock()
        if all(write.until > now for write in self._queue):
            return
        kept = deque(write for write in self._queue if write.until > now)
        for write in self._queue:
            if write.until <= now:
                self._give_up(write, "its deadline passed before the store answered")
        self._queue = kept

    @staticmethod
    def _give_up(write: _Write, why: str) -> None:
        log.error("late write given up (%s): %s", why, write.what)
        if write.given_up is not None:
            write.given_up()


_finishing: set[asyncio.Task[None]] = set()


async def finish_quietly(
    work: Coroutine[Any, Any, None], what: str, logger: logging.Logger
) -> None:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (a client that hangs up
    must not leave a reservation behind), and never raise: a failure is logged. For the writes
    that follow an answer, whose own store retries them if they fail (``LateWrites``)."""
    task = asyncio.create_task(work)
    _finishing.add(task)
    task.add_done_callback(lambda done: _log_failure(done, what, logger))
    with contextlib.suppress(Exception):  # logged by the callback
        await asyncio.shield(task)


def finish_soon(work: Coroutine[Any, Any, None], what: str, logger: logging.Logger) -> None:
    """``finish_quietly`` without waiting, for code that cannot await (a finalizer); ``work``
    is closed unstarted when no event loop runs."""
    try:
        task = asyncio.get_running_loop().create_task(work)
    except RuntimeError:
        work.close()
        return
    _finishing.add(task)
    task.add_done_callback(lambda done: _log_failure(done, what, logger))


def _log_failure(task: asyncio.Task[None], what: str, logger: logging.Logger) -> None:
    _finishing.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("%s failed for now (retried until the store answers): %r", what, exc)

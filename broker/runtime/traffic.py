"""The console's live traffic across workers and replicas: each process adds the requests it
finished to the store's recent traffic (``broker.stores.traffic_base``) in batches.

A finished request is appended to a bounded queue by the request hook (no store call on the
request's path); every ``FLUSH_S`` the queue goes to the store in one script. With Redis every
worker and replica writes to one capped list, so the page shows them all, at most ``FLUSH_S``
late; with the memory store a process sees its own. A store failure drops that batch (logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import msgspec

from broker.background import BackgroundTasks
from broker.errors import BrokerError
from broker.observability import record
from broker.observability.record import RequestSeen
from broker.stores.traffic_base import RecentTraffic

FLUSH_S = 0.5
TTL_S = 86_400
log = logging.getLogger("a2a_broker.console")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RequestSeen)


class SharedTraffic:
    def __init__(self, store: RecentTraffic, keep: int) -> None:
        self.store = store
        self.keep = keep
        self._queue: deque[RequestSeen] = deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None

    def start(self, tasks: BackgroundTasks) -> None:
        record.watchers.append(self._queue.append)
        self._task = tasks.spawn(self._flush_forever(), "console-traffic")

    async def stop(self) -> None:
        if self._queue.append in record.watchers:
            record.watchers.remove(self._queue.append)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def flush(self) -> None:
        rows = [_encoder.encode(self._queue.popleft()) for _ in range(len(self._queue))]
        try:
            await self.store.add(rows, self.keep, TTL_S)
        except BrokerError as err:
            log.warning("%d requests left out of the live traffic page: %s", len(rows), err.reason)

    async def latest(self) -> list[RequestSeen]:
        """The newest requests of every process on the store, newest first; this process's own
        if the store cannot be read."""
        try:
            rows = await self.store.latest(self.keep)
        except BrokerError as err:
            log.warning("live traffic from this process only: %s", err.reason)
            return list(reversed(record.recent))
        return [_decoder.decode(row) for row in rows]

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

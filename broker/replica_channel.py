"""One Redis pub/sub channel shared by every replica: what one publishes, every one receives.

Policy edits (``broker/policy/reload.py``) and operator controls (``broker/runtime/control.py``:
cache invalidations and the global kill switch) each travel on one. Delivery is at most once: a
replica whose subscription was down misses what was published meanwhile, so ``on_gap`` is
called once the subscription is back (redis-py re-subscribes on reconnect), and the receiver
re-reads whatever it may have missed. A message's handler failing is logged; the channel keeps
listening.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.background import BackgroundTasks

Handler = Callable[[bytes], Awaitable[None] | None]
GapHandler = Callable[[], Awaitable[None] | None]

_log = logging.getLogger("a2a_broker.channel")


class ReplicaChannel:
    """Subscribe with ``start`` (a message published after it returns is not missed), publish
    with ``publish``, release with ``stop``. ``retry_s``: the wait after a failed read."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        on_message: Handler,
        *,
        retry_s: float = 1.0,
        on_gap: GapHandler | None = None,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        if not name:
            raise ValueError("a replica channel needs a name")
        self.name = name
        self._redis = redis
        self._on_message = on_message
        self._on_gap = on_gap
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._tasks = tasks if tasks is not None else BackgroundTasks()

    async def start(self) -> None:
        """Subscribe (raises the Redis error if that fails) and start listening."""
        if self._task is not None:
            return
        pubsub = await self._subscribe()
        self._task = self._tasks.spawn(self._listen(pubsub), f"channel-{self.name}")

    async def start_when_possible(self) -> None:
        """Like ``start``, but if Redis cannot be reached now, keep trying in the background
        (``on_gap`` is called once subscribed, as after any gap)."""
        try:
            await self.start()
        except (RedisError, OSError):
            _log.warning("channel %s unavailable at start; retrying", self.name)
            self._task = self._tasks.spawn(self._subscribe_later(), f"channel-{self.name}")

    async def _subscribe(self) -> Any:
        pubsub: Any = self._redis.pubsub()  # redis-py's PubSub is partly untyped
        try:
            await pubsub.subscribe(self.name)
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub

    async def _subscribe_later(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            try:
                pubsub = await self._subscribe()
            except (RedisError, OSError):
                continue
            await self._call(self._on_gap)
            await self._listen(pubsub)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # it releases the subscription in its finally

    async def publish(self, data: bytes) -> bool:
        """Publish to every replica (this one included); False if Redis could not be reached."""
        try:
            await self._redis.publish(self.name, data)
        except (RedisError, OSError):
            _log.warning("nothing published on channel %s: Redis unavailable", self.name)
            return False
        return True

    async def _listen(self, pubsub: Any) -> None:
        gap = False
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except (RedisError, OSError):
                    _log.warning("channel %s unavailable; retrying", self.name)
                    gap = True
                    await asyncio.sleep(self._retry_s)
                    continue
                if gap:
                    gap = False
                    await self._call(self._on_gap)
                if message is not None:
                    await self._call(self._on_message, message["data"])
        finally:
            await pubsub.aclose()

    async def _call(
        self, handler: Callable[..., Awaitable[None] | None] | None, *args: Any
    ) -> None:
        if handler is None:
            return
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a bug in one handler must not end listening for the process's life
            _log.exception("message on channel %s not handled", self.name)

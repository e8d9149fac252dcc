"""One Redis pub/sub channel shared by every replica: what one publishes, every one receives.

Policy edits (``broker/policy/reload.py``) and operator controls
(``broker/runtime/control.py``: cache invalidations and the global kill switch) each travel on
one. Delivery is at most once: a replica whose subscription was down misses what was published
meanwhile, so ``on_gap`` is called once the subscription is back (redis-py re-subscribes on
reconnect), and the receiver re-reads whatever it may have missed. A message's handler failing
is logged; the channel keeps listening.

On Redis Cluster the channel is a plain (not sharded) pub/sub channel: a PUBLISH on any node
reaches the subscribers of every node over the cluster bus, so a replica subscribes on any one
node and, when that node fails, subscribes again on another (then ``on_gap``). Decision 0036
says why not sharded pub/sub. With Sentinel the subscription follows the primary.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from broker.background import BackgroundTasks
from broker.stores.redis_client import REDIS_FAILURES

Handler = Callable[[bytes], Awaitable[None] | None]
GapHandler = Callable[[], Awaitable[None] | None]

_log = logging.getLogger("a2a_broker.channel")
_UNAVAILABLE = REDIS_FAILURES  # what a channel treats as "Redis unavailable"


def pick_node(nodes: list[ClusterNode]) -> ClusterNode:
    """The cluster node a channel subscribes on: any, at random, so subscribers spread."""
    return random.choice(nodes)  # noqa: S311 - spreads load, guards nothing


class ReplicaChannel:
    """Subscribe with ``start`` (a message published after it returns is not missed), publish
    with ``publish``, release with ``stop``. ``retry_s``: the wait after a failed read."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
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
        self._task = self._tasks.spawn(self._run(pubsub), f"channel-{self.name}")

    async def start_when_possible(self) -> None:
        """Like ``start``, but if Redis cannot be reached now, keep trying in the background
        (``on_gap`` is called once subscribed, as after any gap)."""
        try:
            await self.start()
        except _UNAVAILABLE:
            _log.warning("channel %s unavailable at start; retrying", self.name)
            self._task = self._tasks.spawn(self._run(None), f"channel-{self.name}")

    async def _subscribe(self) -> Any:
        pubsub: Any  # redis-py's PubSub is partly untyped
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # the nodes as the cluster knows them now
            pubsub = self._redis.pubsub(node=pick_node(self._redis.get_nodes()))
        else:
            pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.name)
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub

    async def _run(self, pubsub: Any) -> None:
        """Listen; when the subscription breaks (or there is none yet), subscribe afresh (on
        another node of a cluster, on the new primary under Sentinel) and call ``on_gap``:
        whatever was published meanwhile is lost."""
        while True:
            if pubsub is not None:
                await self._listen(pubsub)
            pubsub = await self._subscribe_again()
            await self._call(self._on_gap)

    async def _subscribe_again(self) -> Any:
        while True:
            await asyncio.sleep(self._retry_s)
            try:
                return await self._subscribe()
            except _UNAVAILABLE:
                continue

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # it releases the subscription in its finally

    async def publish(self, data: bytes) -> bool:
        """Publish to every replica (this one included); False if Redis could not be reached."""
        try:
            await self._redis.publish(self.name, data)
        except _UNAVAILABLE:
            _log.warning("nothing published on channel %s: Redis unavailable", self.name)
            return False
        return True

    async def _listen(self, pubsub: Any) -> None:
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except _UNAVAILABLE:
                    _log.warning("channel %s unavailable; retrying", self.name)
                    return
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

"""Scripts called in the same event-loop turn go to Redis as one pipeline: one round trip.

Under load many requests reach a store script at about the same time (a budget reserve here, a
settle and a task-route claim there). redis-py spends most of a call's CPU on its own machinery
(taking a pooled connection, packing, parsing, releasing), so ``BatchingRedis`` queues each
``register_script`` call and, once the running turn of the event loop is over, sends every
queued call as one non-transactional pipeline of ``EVALSHA`` s. Each caller gets its own reply
or error, exactly as if it had called alone:

- a script Redis does not know (``NOSCRIPT``, after a restart) is run again on its own, which
  loads it;
- a connection error or timeout fails every call of that pipeline (each caller sees a store
  failure, as it would have alone); the retry policy is the pool's (see ``redis_client``);
- nothing is atomic across the calls of one pipeline, and nothing needs to be: each script is
  atomic by itself, as before.

A lone call (the usual case at low load) goes out at once, as a plain ``EVALSHA``.

With ``require_replicas`` (``[store] replica_acks``) every batch ends with ``WAIT`` in the same
round trip, and no caller learns its script's reply until that many replicas hold the writes. On
a cluster each node the batch touches gets its own ``WAIT`` after its own scripts, in its own
pipeline, and every node must confirm.

On Redis Cluster (``BatchingRedisCluster``) the same queue becomes redis-py's cluster pipeline,
which splits it by the node that owns each call's slot and sends the per-node pipelines
concurrently: a turn's calls cost one round trip per node touched, in parallel, not one after
another. A script's keys must share one slot (the key layouts' hash tags see to that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT, KeyT, ScriptTextT

_Call = tuple["BatchedScript", Sequence[KeyT], Sequence[EncodableT], "asyncio.Future[Any]"]


class NotReplicatedError(RedisError):
    """WAIT: fewer replicas than required confirmed a batch's writes in time."""


class _Batcher:
    """The queue of one client's script calls, flushed once per event-loop turn."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        self._queued: list[_Call] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._replicas = 0
        self._replica_timeout_ms = 0

    def require_replicas(self, replicas: int, timeout_ms: int) -> None:
        """End every batch with ``WAIT replicas timeout_ms`` in the same round trip; a batch
        fewer replicas confirmed fails every call in it (``NotReplicatedError``): the writes
        happened on the primary, but none is acted on unless it would survive a failover."""
        self._replicas, self._replica_timeout_ms = replicas, timeout_ms

    def queue(
        self, script: BatchedScript, keys: Sequence[KeyT], args: Iterable[EncodableT]
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)  # after what this turn of the loop still has to run
        self._queued.append((script, keys, tuple(args), future))
        return future

    def _flush(self) -> None:
        calls, self._queued = self._queued, []
        alone = len(calls) == 1 and not self._replicas
        task = asyncio.get_running_loop().create_task(
            self._run_alone(calls[0]) if alone else self._run_together(calls)
        )
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _run_together(self, calls: list[_Call]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                waits = self._queue_waits(pipe, calls)
                if isinstance(pipe, ClusterPipeline) and waits:
                    # A call redirected to another node would miss that node's WAIT: it fails
                    # closed instead (the topology is refreshed for the next batch).
                    replies = await pipe.execute(raise_on_error=False, allow_redirections=False)
                else:
                    replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # every caller learns what happened
            for *_, future in calls:
                _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if waits:
            acks, replies = replies[len(calls) :], replies[: len(calls)]
            if not self._replicated(calls, acks):
                return
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                await self._load_and_run(call)
            elif isinstance(reply, Exception):
                _fail(call[3], reply)
            elif not call[3].done():
                call[3].set_result(reply)

    def _queue_waits(self, pipe: Any, calls: list[_Call]) -> int:
        """With ``require_replicas``, queue the batch's ``WAIT`` s after its scripts: one on a
        single server; on a cluster one per node the batch's calls go to, aimed at that node
        (a node's WAIT follows its own scripts in its own pipeline: still one round trip per
        node). How many were queued."""
        if not self._replicas:
            return 0
        wait = ("WAIT", self._replicas, self._replica_timeout_ms)
        if not isinstance(self._client, RedisCluster):
            pipe.execute_command(*wait)
            return 1
        nodes = {}
        for _, keys, _, _ in calls:
            node = self._client.nodes_manager.get_node_from_slot(self._client.keyslot(keys[0]))
            nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command(*wait, target_nodes=node)
        return len(nodes)

    def _replicated(self, calls: list[_Call], acks: list[Any]) -> bool:
        """Whether every WAIT of the batch saw enough replicas; if not, every call fails."""
        enough = [isinstance(acked, int) and acked >= self._replicas for acked in acks]
        short = next((acked for acked, ok in zip(acks, enough, strict=True) if not ok), None)
        if all(enough):
            return True
        failure = short if isinstance(short, Exception) else NotReplicatedError(
            f"{short} of {self._replicas} replicas confirmed within {self._replica_timeout_ms} ms"
        )  # fmt: skip
        for *_, future in calls:
            _fail(future, failure)
        return False

    async def _load_and_run(self, call: _Call) -> None:
        """A script Redis does not know (after a restart or failover): load it, run again."""
        if not self._replicas:
            await self._run_alone(call)  # redis-py's own call loads it
            return
        try:
            await self._client.script_load(call[0].script)
        except BaseException as exc:
            _fail(call[3], exc)
            if not isinstance(exc, Exception):
                raise
            return
        await self._run_together([call])

    async def _run_alone(self, call: _Call) -> None:
        script, keys, args, future = call
        try:
            reply = await script.call_now(keys, args)
        except BaseException as exc:  # the caller learns what happened
            _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not future.done():
            future.set_result(reply)


class BatchingRedis(Redis):
    """A redis-py client whose registered scripts share pipelines (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batcher = _Batcher(self)

    def register_script(self, script: ScriptTextT) -> BatchedScript:  # type: ignore[override]
        return BatchedScript(self, script)


class BatchingRedisCluster(RedisCluster):
    """The cluster client whose registered scripts share per-node pipelines (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batcher = _Batcher(self)

    def register_script(self, script: ScriptTextT) -> BatchedScript:  # type: ignore[override]
        return BatchedScript(self, script)


class BatchedScript(AsyncScript):
    """``await script(keys=..., args=...)``, as redis-py's, sent in its turn's pipeline."""

    registered_client: BatchingRedis | BatchingRedisCluster

    def __init__(self, client: BatchingRedis | BatchingRedisCluster, script: ScriptTextT) -> None:
        super().__init__(client, script)

    async def __call__(  # type: ignore[override]  # no ``client`` argument: always batched
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
    ) -> Any:
        return await self.registered_client.batcher.queue(self, keys or [], args or [])

    async def call_now(self, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """Run alone, at once (redis-py's own call: loads the script if Redis lacks it)."""
        return await super().__call__(keys=keys, args=args)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)

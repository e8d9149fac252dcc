"""Scripts called in the same event-loop turn go to Redis together: one round trip.

Under load many requests reach a store script at about the same time (a budget reserve here, a
settle and a task-route claim there). ``BatchingRedis`` queues each ``register_script`` call
and, once the running turn of the event loop is over, sends every queued call in one write of
``EVALSHA`` s, without a transaction. Each caller gets its own reply or error, exactly as if it
had called alone:

- a script Redis does not know (``NOSCRIPT``, after a restart) is loaded and run again; on one
  server, a batch with a script not known to be loaded loads it first, with every other it has
  loaded (on a cluster, on every primary, in a round trip of its own), so the calls of a batch
  run in the order they were queued (a call that met NOSCRIPT would run after the calls behind
  it);
- a connection error or timeout fails every call of that batch (each caller sees a store
  failure, as it would have alone); the retry policy is the pool's (see ``redis_client``): one
  retry of the batch on a connection error, none on a timeout;
- an argument Redis cannot take fails its own call (``DataError``), before anything is sent;
- nothing is atomic across the calls of one batch, and nothing needs to be: each script is
  atomic by itself, as before.

On one server a batch skips redis-py's ``Pipeline`` (decision 0072), since redis-py's machinery
per command cost more client CPU than Redis spends running the scripts; each call is packed once,
when it is queued. The callback that ends the turn writes the batch on the batcher's link
(``_LinkBatcher``, ``redis_link``, decision 0083: a redis-py connection whose transport it took
over after the handshake), and the replies are parsed as they come in, each caller's future
resolved there: no task and no timeout scope per round trip, and the caller runs in the next
turn. Behind Sentinel a lost link (a failover, ``READONLY`` from a demoted primary) is replaced
by a connection to the primary Sentinel names then. (``_WireBatcher``, decision 0072's task that
reads with redis-py's parser, stays as the reference ``benchmarks.redis_batch_costs`` measures.)

With ``require_replicas`` (``[store] replica_acks``) every batch ends with ``WAIT`` in the same
round trip, and no caller learns its script's reply until that many replicas hold the writes. On
a cluster each node the batch touches gets its own ``WAIT`` after its own scripts, in its own
pipeline, and every node must confirm.

On Redis Cluster (``BatchingRedisCluster``) the same queue becomes redis-py's cluster pipeline,
which splits it by the node that owns each call's slot and sends the per-node pipelines
concurrently: a turn's calls cost one round trip per node touched, in parallel, not one after
another; a lone call goes out as a plain ``EVALSHA``. A script's keys must share one slot (the
key layouts' hash tags see to that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT, KeyT, ScriptTextT

from broker.stores.redis_link import LinkedServer, linkable
from broker.stores.redis_wire import ConnectionLender, exchange, pack


class NotReplicatedError(RedisError):
    """WAIT: fewer replicas than required confirmed a batch's writes in time."""


class _Notify:
    """Where a call no one awaits gets its reply: a callback, told once, in the turn the reply
    came in (``_Batcher.notify``). Answers to what the batchers ask of a caller's future."""

    __slots__ = ("_callback", "_told")

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback
        self._told = False

    def done(self) -> bool:
        return self._told

    def set_result(self, reply: Any) -> None:
        self._tell(reply)

    def set_exception(self, exc: BaseException) -> None:
        self._tell(exc)

    def cancel(self) -> bool:
        self._tell(asyncio.CancelledError())
        return True

    def _tell(self, outcome: Any) -> None:
        if self._told:
            return
        self._told = True
        try:
            self._callback(outcome)
        except Exception as exc:  # never into the link's reply parsing: the loop reports it
            asyncio.get_running_loop().call_exception_handler(
                {"message": "a script reply's callback failed", "exception": exc}
            )


# Where a queued call's caller learns its reply: a future it awaits, or a callback (``_Notify``).
_Waiter = asyncio.Future[Any] | _Notify


class _Call:
    """One queued script call: what to send, and where its caller waits for the reply."""

    __slots__ = ("args", "future", "keys", "packed", "script")

    def __init__(
        self, script: BatchedScript, keys: Sequence[KeyT], args: tuple[EncodableT, ...],
        future: _Waiter, packed: bytes = b"",
    ) -> None:  # fmt: skip
        self.script, self.keys, self.args, self.future = script, keys, args, future
        self.packed = packed  # its EVALSHA as RESP bytes, for the wire batcher


class _Batcher:
    """The queue of one client's script calls, flushed once per event-loop turn; how a batch
    goes out is the subclass's (``_send``)."""

    # Whether a batch goes out as the calls' RESP bytes, so a call may come packed (``queue``).
    writes_packed = False

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        self._queued: list[_Call] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._replicas = 0
        self._replica_timeout_ms = 0
        # Scripts Redis (on a cluster, every primary) is known to hold: loaded by this batcher,
        # with no NOSCRIPT or failed round trip (a restart, a failover) since.
        self._loaded: set[BatchedScript] = set()

    def require_replicas(self, replicas: int, timeout_ms: int) -> None:
        """End every batch with ``WAIT replicas timeout_ms`` in the same round trip; a batch
        fewer replicas confirmed fails every call in it (``NotReplicatedError``): the writes
        happened on the primary, but none is acted on unless it would survive a failover."""
        self._replicas, self._replica_timeout_ms = replicas, timeout_ms

    def queue(
        self, script: BatchedScript, keys: Sequence[KeyT], args: Iterable[EncodableT],
        packed: bytes = b"",
    ) -> asyncio.Future[Any]:  # fmt: skip
        """Queue a call of ``script``; the future gets its reply or error. ``packed``: the
        call's ``EVALSHA`` already in RESP bytes, exactly what ``redis_wire.pack`` makes of it
        (only for a batcher that ``writes_packed``; a caller that packed it in parts, once per
        constant part, decision 0097); ``keys`` and ``args`` are what it sends."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(loop, _Call(script, keys, tuple(args), future, packed))
        return future

    def notify(
        self, script: BatchedScript, keys: Sequence[KeyT], args: Iterable[EncodableT],
        callback: Callable[[Any], None], packed: bytes = b"",
    ) -> None:  # fmt: skip
        """Queue a call as ``queue`` does, for no one to await: ``callback`` gets its reply, or
        the exception its caller would have seen, once, in the turn the reply comes in (no
        future, and no loop turn to wake a waiter). It may be called before this returns (an
        argument Redis cannot take); an exception it raises goes to the loop's handler."""
        self._enqueue(asyncio.get_running_loop(),
                      _Call(script, keys, tuple(args), _Notify(callback), packed))  # fmt: skip

    def _enqueue(self, loop: asyncio.AbstractEventLoop, call: _Call) -> None:
        if not self._prepare(call):
            return  # failed already: nothing to send
        if not self._queued:
            self._schedule(loop)
        self._queued.append(call)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have the queue sent once the running turn of the loop is over."""
        # A task's first step runs after what this turn of the loop still has to run, and
        # takes the queue then: the turn's calls go together, written in that next turn
        # (a callback that only started the task would cost one more turn per round trip).
        task = loop.create_task(self._flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    def _loads_for(self, calls: list[_Call]) -> Sequence[BatchedScript]:
        """The scripts to load ahead of ``calls``: none while Redis is known to hold every one
        of them; else theirs and every other this batcher has loaded (a few dozen at most).

        Why so many: a call whose script Redis lacks fails with NOSCRIPT and runs again after
        the batch, behind the calls queued after it, which then ran first. Loading only the
        unknown scripts would leave the known ones as they were; if Redis lost those meanwhile
        (``SCRIPT FLUSH`` under a live connection), a later batch could run out of order. So
        whatever is loaded is loaded together, and after a loss Redis lacks all of them or none
        (unless another client loads some in between: then, as before, a call Redis lacked the
        script of runs after the calls queued behind it in its batch)."""
        loaded = self._loaded
        for call in calls:
            if call.script not in loaded:
                return list(dict.fromkeys([*(call.script for call in calls), *loaded]))
        return ()

    def _prepare(self, call: _Call) -> bool:
        """Ready ``call`` to be sent; False if it failed (its future then holds the error)."""
        return True

    async def _flush(self) -> None:
        calls, self._queued = self._queued, []
        await self._send(calls)

    async def _send(self, calls: list[_Call]) -> None:
        raise NotImplementedError

    def _replicated(self, calls: list[_Call], acks: list[Any]) -> bool:
        """Whether every WAIT of the batch saw enough replicas; if not, every call fails."""
        enough = [isinstance(acked, int) and acked >= self._replicas for acked in acks]
        short = next((acked for acked, ok in zip(acks, enough, strict=True) if not ok), None)
        if all(enough):
            return True
        failure = short if isinstance(short, Exception) else NotReplicatedError(
            f"{short} of {self._replicas} replicas confirmed within {self._replica_timeout_ms} ms"
        )  # fmt: skip
        for call in calls:
            _fail(call.future, failure)
        return False

    async def aclose(self) -> None:
        """Give back what the batcher holds of the client's pool."""


class _WireBatcher(_Batcher):
    """One server, decision 0072's way (the broker's clients take ``_LinkBatcher``): each batch
    is packed once and written on a redis-py connection, its replies read with that
    connection's parser (``redis_wire``): the same round trips as a pipeline, a fraction of the
    client CPU."""

    writes_packed = True

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self._encoder = client.get_encoder()  # type: ignore[no-untyped-call]
        self._lender = ConnectionLender(client.connection_pool)
        self._wait = b""

    def require_replicas(self, replicas: int, timeout_ms: int) -> None:
        super().require_replicas(replicas, timeout_ms)
        self._wait = pack(self._encoder, ("WAIT", replicas, timeout_ms)) if replicas else b""

    def _prepare(self, call: _Call) -> bool:
        if call.packed:  # by its caller, from parts packed once
            return True
        command = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        try:
            call.packed = pack(self._encoder, command)
        except Exception as exc:  # an argument Redis cannot take (DataError, a lone surrogate
            # UnicodeEncodeError): this caller's error alone, as when it called alone
            call.future.set_exception(exc)
            return False
        return True

    async def _send(self, calls: list[_Call], loads: Sequence[BatchedScript] | None = None) -> None:
        """Send ``calls`` (after ``SCRIPT LOAD`` of ``loads``, by default ``_loads_for``, and
        before the batch's ``WAIT``), hand each caller its reply; calls whose script Redis lacks
        go again, loading it."""
        if loads is None:
            loads = self._loads_for(calls)
        data = self._pack_batch(calls, loads)
        count = len(loads) + len(calls) + (1 if self._replicas else 0)
        try:
            connection = await self._lender.take()
            try:
                replies = await exchange(connection, data, count)
            finally:
                await self._lender.give_back(connection)
        except BaseException as exc:  # every caller learns what happened
            self._loaded.clear()  # Redis may have restarted: load before the next calls
            _fail_all(calls, exc)
            return
        missing = self._hand_out(calls, loads, replies)
        if missing:  # Redis lost its scripts (a restart, a failover): load them, run again
            await self._send(missing, loads=_scripts_of(missing))

    def _pack_batch(self, calls: list[_Call], loads: Sequence[BatchedScript]) -> bytes:
        """``SCRIPT LOAD`` of ``loads``, the calls, the batch's ``WAIT``: one write."""
        return b"".join(
            [*(pack(self._encoder, ("SCRIPT", "LOAD", s.script)) for s in loads),
             *(call.packed for call in calls), self._wait]
        )  # fmt: skip

    def _hand_out(
        self, calls: list[_Call], loads: Sequence[BatchedScript], replies: list[Any]
    ) -> list[_Call]:
        """Each caller its reply or error; the calls whose script Redis lacks (NOSCRIPT, when
        the batch did not load it), to be sent again."""
        loaded = dict(zip(loads, replies, strict=False))
        if loaded:  # most batches load nothing: no generator for them
            self._loaded.update(s for s, r in loaded.items() if not isinstance(r, Exception))
        replies = replies[len(loads) :]
        if self._replicas and not self._replicated(calls, replies[len(calls) :]):
            return []
        missing = []
        for call, reply in zip(calls, replies, strict=False):
            if isinstance(reply, NoScriptError) and not loads:
                missing.append(call)
            elif isinstance(reply, Exception):
                _fail(call.future, _load_failure(loaded.get(call.script), reply))
            elif not call.future.done():
                call.future.set_result(reply)
        if missing:  # Redis lost scripts under a live connection (SCRIPT FLUSH): trust none
            self._loaded.clear()
        return missing

    async def aclose(self) -> None:
        await self._lender.aclose()


class _LinkBatcher(_WireBatcher):
    """One server (standalone, or Sentinel's primary): each batch is written from the callback
    that ends its turn, on the batcher's ``RedisLink``, and its callers get their replies in the
    turn the bytes come in (``redis_link``): no task, no timeout scope, no extra turn per round
    trip."""

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self._server = LinkedServer(client.connection_pool)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        calls, self._queued = self._queued, []
        self._write(calls, self._loads_for(calls))

    def _write(self, calls: list[_Call], loads: Sequence[BatchedScript]) -> None:
        count = len(loads) + len(calls) + (1 if self._replicas else 0)

        def done(outcome: list[Any] | BaseException) -> None:
            if isinstance(outcome, BaseException):
                self._loaded.clear()  # Redis may have restarted: load before the next calls
                for call in calls:  # every caller learns what happened
                    _fail(call.future, outcome)
                return
            missing = self._hand_out(calls, loads, outcome)
            if missing:  # Redis lost its scripts (a restart, a failover): load them, run again
                self._write(missing, _scripts_of(missing))

        self._server.send(self._pack_batch(calls, loads), count, done)

    async def aclose(self) -> None:
        await self._server.aclose()
        await super().aclose()


class _PipelineBatcher(_Batcher):
    """Redis Cluster (or any redis-py client): each batch is redis-py's pipeline, which the
    cluster client splits by node and sends to the nodes at once."""

    async def _send(self, calls: list[_Call]) -> None:
        if len(calls) == 1 and not self._replicas:
            await self._run_alone(calls[0])  # redis-py's own call loads a script Redis lacks
        else:
            await self._run_together(calls)

    async def _load(self, calls: list[_Call]) -> None:
        """Load ``_loads_for(calls)`` on every primary before the batch: one more round trip,
        for such a batch only."""
        scripts = self._loads_for(calls)
        if not scripts:
            return
        outcomes = await asyncio.gather(
            *(self._client.script_load(s.script) for s in scripts), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the batch fails, as it would had the pipeline's write failed
        self._loaded.update(scripts)

    async def _run_together(self, calls: list[_Call]) -> None:
        try:
            await self._load(calls)
            async with self._client.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                waits = self._queue_waits(pipe, calls)
                if isinstance(pipe, ClusterPipeline) and waits:
                    # A call redirected to another node would miss that node's WAIT: it fails
                    # closed instead (the topology is refreshed for the next batch).
                    replies = await pipe.execute(raise_on_error=False, allow_redirections=False)
                else:
                    replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # every caller learns what happened
            self._loaded.clear()  # a node may have restarted or failed over: load again
            _fail_all(calls, exc)
            return
        if waits:
            acks, replies = replies[len(calls) :], replies[: len(calls)]
            if not self._replicated(calls, acks):
                return
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):  # a node lost its scripts: trust none
                self._loaded.clear()
                await self._load_and_run(call)
            elif isinstance(reply, Exception):
                _fail(call.future, reply)
            elif not call.future.done():
                call.future.set_result(reply)

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
        for call in calls:
            slot = self._client.keyslot(call.keys[0])
            node = self._client.nodes_manager.get_node_from_slot(slot)
            nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command(*wait, target_nodes=node)
        return len(nodes)

    async def _load_and_run(self, call: _Call) -> None:
        """A script Redis does not know (after a restart or failover): load it, run again."""
        if not self._replicas:
            await self._run_alone(call)  # redis-py's own call loads it
            return
        try:
            await self._client.script_load(call.script.script)
        except BaseException as exc:
            _fail_all([call], exc)
            return
        await self._run_together([call])

    async def _run_alone(self, call: _Call) -> None:
        try:
            reply = await call.script.call_now(call.keys, call.args)
        except BaseException as exc:  # the caller learns what happened
            _fail_all([call], exc)
            return
        if not call.future.done():
            call.future.set_result(reply)


class BatchingRedis(Redis):
    """A redis-py client whose registered scripts share round trips (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        linked = linkable(self.connection_pool)
        self.batcher: _Batcher = _LinkBatcher(self) if linked else _WireBatcher(self)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.batcher.aclose()
        await super().aclose(close_connection_pool)

    def register_script(self, script: ScriptTextT) -> BatchedScript:  # type: ignore[override]
        return BatchedScript(self, script)


class BatchingRedisCluster(RedisCluster):
    """The cluster client whose registered scripts share per-node pipelines (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batcher: _Batcher = _PipelineBatcher(self)

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


def _scripts_of(calls: Iterable[_Call]) -> list[BatchedScript]:
    return list(dict.fromkeys(call.script for call in calls))


def _load_failure(load_reply: Any, reply: Exception) -> Exception:
    """A call's error: why its script's load failed, if it did (NOSCRIPT follows from it)."""
    if isinstance(reply, NoScriptError) and isinstance(load_reply, Exception):
        return load_reply
    return reply


def _fail_all(calls: Iterable[_Call], exc: BaseException) -> None:
    """Every caller learns what happened; a cancellation (or an exit) then goes on up."""
    for call in calls:
        _fail(call.future, exc)
    if not isinstance(exc, Exception):
        raise exc


def _fail(future: _Waiter, exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)

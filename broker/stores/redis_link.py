"""The script batcher's reply path to one Redis server (standalone, or the primary Sentinel
names), without a task per round trip (decision 0083).

redis-py connects and does the handshake (AUTH, SELECT, HELLO, client name, TLS); then a
``RedisLink`` takes over that connection's transport (``transport.set_protocol``) and parses
the replies itself, with ``hiredis.Reader`` in ``data_received``: each batch written on the link
gets its replies there, in order, and its callback runs at once, in the turn the bytes came in.
No task reads the socket, no ``asyncio.timeout`` scope is made per batch, and the callers wake
in the next turn. Batches are pipelined: a batch is written as soon as it is ready, whatever is
still in flight, and the replies come back in the order the batches were written.

Kept from redis-py, by using its objects or its rules:

- the connection and its handshake (the pool lends it, ``get_connection``);
- the error classes: the reader maps each error reply as redis-py's parsers do
  (``parse_error``: ``NoScriptError``, ``OutOfMemoryError``, ``ResponseError``...), and a reply
  that maps to a ``ConnectionError`` (``LOADING``, ``MAXCLIENTS``...) fails the link as redis-py
  raises it;
- the socket timeout per reply: each reply must come within ``socket_timeout`` of the previous
  one (or of the write); when one does not, every batch in flight fails with redis-py's
  ``TimeoutError`` and the connection is dropped, so no later batch reads a late reply;
- the retry policy (the connection's ``retry``: the broker's one retry on a connection error,
  none on a timeout): a batch in flight on a link that is lost is written again on a fresh one;
- the idle health check: a link idle over ``health_check_interval`` sends a ``PING`` ahead of
  its next batch (in the same write).

A connection lost (reset, closed by the server, timed out) is disconnected and given back to
the pool; the next batch opens a new link, on a connection the pool connects anew. Behind
Sentinel that connection asks Sentinel for the primary, so after a failover the next batch goes
to the new one; and, as ``SentinelManagedConnection`` reads it, ``READONLY`` from the primary
means it was demoted: the link is lost, and its batches go again (the retry policy) to the
primary Sentinel names now.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What a batch's callback gets: its replies in order (an error reply in its place, as an
# exception instance), or the exception that failed the whole batch.
Outcome = list[Any] | BaseException
Done = Callable[[Outcome], None]

_PING = b"*1\r\n$4\r\nPING\r\n"
_MORE = object()  # the reader's answer when a reply is not complete yet
_PUSH = hiredis.PushNotification


def linkable(pool: ConnectionPool) -> bool:
    """Whether a batcher on ``pool`` takes the link: one server, standalone or the primary
    Sentinel names (not a replica pool). RESP2 or RESP3 (redis-py's default): the reader reads
    either."""
    return getattr(pool, "is_master", True) is True


def _demoted(connection: AbstractConnection) -> bool:
    """Whether ``READONLY`` on this connection means its primary was demoted (a connection to
    Sentinel's primary, as ``SentinelManagedConnection.read_response`` reads it)."""
    pool = getattr(connection, "connection_pool", None)
    return isinstance(pool, SentinelConnectionPool) and pool.is_master


def reader_for(connection: AbstractConnection) -> hiredis.Reader:
    """A reader that turns replies into what redis-py's hiredis parser returns for the same
    bytes (``_AsyncHiredisParser.on_connect``): error replies become ``parse_error`` 's classes."""
    kwargs: dict[str, Any] = {
        "protocolError": InvalidResponse,
        "replyError": BaseParser.parse_error,
        "notEnoughData": _MORE,
    }
    encoder = connection.encoder
    if encoder.decode_responses:
        kwargs["encoding"] = encoder.encoding
        kwargs["errors"] = encoder.encoding_errors
    return hiredis.Reader(**kwargs)


def _connection_error(reply: Any) -> RedisConnectionError | None:
    """The ``ConnectionError`` redis-py raises for this reply, if it raises one."""
    if isinstance(reply, RedisConnectionError):
        return reply
    if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
        return reply[0]
    return None


class _Batch:
    """Commands written in one go: how many replies they take, and who wants them."""

    __slots__ = ("count", "data", "done", "replies", "tries")

    def __init__(self, data: bytes, count: int, done: Done) -> None:
        self.data, self.count, self.done = data, count, done
        self.replies: list[Any] = []
        self.tries = 0


def _ignore(_outcome: Outcome) -> None:
    """A health check's ``PING``: its reply proves the link alive, nothing more."""


class RedisLink(asyncio.Protocol):
    """One redis-py connection whose transport this protocol took over after the handshake."""

    def __init__(
        self, connection: AbstractConnection, lost: Callable[[RedisLink, BaseException], None]
    ) -> None:
        writer = connection._writer
        if writer is None or writer.transport.is_closing():
            raise RedisConnectionError("Connection closed by the server before write")
        self.connection = connection
        self.pending: deque[_Batch] = deque()
        self.failure: BaseException | None = None
        self._lost = lost
        self._loop = asyncio.get_running_loop()
        self._reader = reader_for(connection)
        self._demoted = _demoted(connection)
        self._timeout = connection.socket_timeout
        self._interval = connection.health_check_interval
        self._next_check = connection.next_health_check
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._transport = writer.transport
        # redis-py's own protocol is told when the connection goes, so its ``disconnect``
        # (closing its stream writer, waiting for the close) ends as it would have.
        self._stream_protocol = self._transport.get_protocol()
        self._transport.set_protocol(self)

    def send(self, batch: _Batch) -> None:
        """Write ``batch``; its ``done`` gets its replies once they all came, or the error."""
        if self.failure is not None or self._transport.is_closing():  # gone since: the
            self.pending.append(batch)  # owner takes the batch back, as those in flight
            if self.failure is None:
                self.fail(RedisConnectionError("Connection closed by the server"))
            else:
                self._lost(self, self.failure)
            return
        data = batch.data
        if not self.pending:  # the link was idle: this batch's first reply starts the clock
            now = self._loop.time()
            self._deadline = now + (self._timeout or 0)
            if self._interval and now > self._next_check:
                self.pending.append(_Batch(_PING, 1, _ignore))
                data = _PING + data
        self.pending.append(batch)
        self._transport.write(data)
        if self._timeout and self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self.pending
        progress = False
        while True:
            try:
                reply = reader.gets()
            except Exception as exc:  # bytes redis-py's parser cannot read
                # either (InvalidResponse, or an error text its class refuses): it raises too
                self.fail(exc)
                return
            if reply is _MORE:
                break
            if type(reply) is _PUSH:  # RESP3 out-of-band data (nothing here subscribes): no
                continue  # command's reply, as redis-py's parser sets it aside
            if not pending:  # a reply no command asked for: the connection is out of step
                self.fail(RedisConnectionError("Protocol error: a reply no command asked for"))
                return
            lost = _connection_error(reply)
            if self._demoted and isinstance(reply, ReadOnlyError):
                # Sentinel moved the primary: the next link asks Sentinel where it is now
                lost = RedisConnectionError("The previous master is now a slave")
            if lost is not None:
                self.fail(lost)
                return
            progress = True
            batch = pending[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                pending.popleft()
                batch.done(batch.replies)
                if self.failure is not None:  # the callback closed the link
                    return
        if progress:
            now = self._loop.time()
            self._deadline = now + (self._timeout or 0)  # the next reply's clock starts now
            if self._interval:
                self._next_check = now + self._interval

    def eof_received(self) -> bool:
        self.fail(RedisConnectionError("Connection closed by server."))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            where = self.connection._host_error()
            reason = exc.args if exc is not None else "connection closed"
            self.fail(RedisConnectionError(f"Error while reading from {where} : {reason}"))
        self._stream_protocol.connection_lost(exc)

    def _expire(self) -> None:
        self._timer = None
        if not self.pending or self.failure is not None:
            return  # idle: no timer until the next write
        if self._loop.time() < self._deadline:  # replies came since: wait for the next one
            self._timer = self._loop.call_at(self._deadline, self._expire)
            return
        self.fail(RedisTimeoutError(f"Timeout reading from {self.connection._host_error()}"))

    def fail(self, exc: BaseException) -> None:
        """Close the link: the batches in flight go to the owner (``lost``) with ``exc``."""
        if self.failure is not None:
            return
        self.failure = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()
        self._lost(self, exc)


class LinkedServer:
    """The batcher's way to one server: one ``RedisLink`` at a time, opened when first needed,
    and again after one is lost.

    ``send`` never waits: on an open link the batch is written at once; otherwise it waits for
    the link being opened. A batch fails with the link's error (a timeout, a closed client), or
    is written again on the next link when the connection was lost and its retry policy
    allows another try.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._link: RedisLink | None = None
        self._waiting: list[_Batch] = []
        self._opening: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._closed = False

    def send(self, data: bytes, count: int, done: Done) -> None:
        self._send(_Batch(data, count, done))

    def _send(self, batch: _Batch) -> None:
        if self._closed:
            batch.done(RedisConnectionError("Connection closed by the client"))
            return
        link = self._link
        if link is not None:
            link.send(batch)
            return
        self._waiting.append(batch)
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            link = await self._connect()
        except BaseException as exc:  # every waiting batch learns what happened
            self._opening = None
            failure = exc
            if self._closed and isinstance(exc, asyncio.CancelledError):  # by ``aclose``
                failure = RedisConnectionError("Connection closed by the client")
            waiting, self._waiting = self._waiting, []
            for batch in waiting:
                batch.done(failure)
            if not isinstance(exc, Exception):
                raise
            return
        self._opening = None
        self._link = link
        waiting, self._waiting = self._waiting, []
        for batch in waiting:
            link.send(batch)

    async def _connect(self) -> RedisLink:
        """A connection of the pool, connected (its handshake done), taken over by a link."""
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if not connection.is_connected:
                await connection.connect()  # type: ignore[no-untyped-call]
            self._refuse_if_closed()
            return RedisLink(connection, self._on_lost)
        except BaseException:
            self._chore(self._give_back(connection))
            raise

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RedisConnectionError("Connection closed by the client")

    def _on_lost(self, link: RedisLink, exc: BaseException) -> None:
        if self._link is link:
            self._link = None
            self._chore(self._give_back(link.connection))
        pending, link.pending = link.pending, deque()
        # The connection's own policy, as redis-py applies it (its backoff aside: the broker's
        # policy has none): the broker's retries a connection error once, never a timeout.
        retry: Any = link.connection.retry
        again = isinstance(exc, tuple(retry._supported_errors)) and not self._closed
        for batch in pending:
            if batch.done is _ignore:
                continue  # a health check's PING: the next link is a fresh connection
            if again and batch.tries < retry._retries:
                batch.tries += 1
                batch.replies = []
                self._send(batch)  # on the next link (a fresh connection)
            else:
                batch.done(exc)

    async def _give_back(self, connection: AbstractConnection) -> None:
        await connection.disconnect(nowait=True)
        await self._pool.release(connection)

    def _chore(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def aclose(self) -> None:
        """Fail what is in flight (``ConnectionError``), give the connection back to the pool."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._link is not None:
            self._link.fail(RedisConnectionError("Connection closed by the client"))
        while self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)

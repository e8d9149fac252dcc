"""The script batcher's lean way to one Redis server: commands packed once, written on one of
redis-py's own connections, their replies read with that connection's parser (decision 0072).

``pack`` serves every one-server batcher. The broker's clients send their batches on
``redis_link`` (decision 0083), whose protocol parses the replies as they come in, with no task
reading them; ``exchange`` and ``ConnectionLender`` serve ``_WireBatcher``, kept as the
reference ``benchmarks.redis_batch_costs`` measures against.

redis-py's ``Pipeline.execute`` and ``execute_command`` spend more client CPU than Redis spends
running the scripts: a pool checkout under a condition and a lock, an encoder and a packer per
command, a retry wrapper and a timeout scope per reply, observability hooks per call. The batcher
needs none of that per call: ``pack`` turns one command into RESP bytes once (with redis-py's own
``Encoder``, so an argument of a type Redis cannot take fails as it would there, with
``DataError``), and ``exchange`` writes a whole batch at once and reads its replies.

Kept from redis-py, by using its objects: the connection (its handshake: AUTH, SELECT, HELLO,
TLS), its parser (so each error reply becomes the same exception class: ``NoScriptError``,
``OutOfMemoryError``...), its idle health check (a ``PING`` before using a connection idle over
``health_check_interval``), its retry policy (``conn.retry``: the pool's one retry on a
connection error, never on a timeout) and its socket timeout, applied to the write and to each
reply as ``read_response`` applies it. A connection that fails or times out is dropped, as
redis-py drops it, so no later batch reads a stale reply.

``ConnectionLender`` keeps the connections a batch used for the next batch instead of giving
them back to the pool each time (at most ``KEEP`` idle), except behind Sentinel, whose pool must
see each connection back to move it to a new primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

# Idle connections the batcher keeps between batches; more in flight at once go back to the pool.
KEEP = 8


# Argument types hiredis packs exactly as redis-py's default Encoder (UTF-8, strict) encodes
# them; any other (float, bytearray, bool, None...) goes through the Encoder itself.
_NATIVE = frozenset({bytes, str, int})


def pack(encoder: Any, args: Sequence[EncodableT]) -> bytes:
    """One command as RESP bytes, every argument encoded as redis-py's ``encoder`` does.

    Raises ``DataError`` for an argument redis-py would refuse (a bool, None, a dict...).
    """
    if (
        encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
        and all(map(_NATIVE.__contains__, map(type, args)))  # no Python frame per argument
    ):  # fmt: skip
        try:
            native: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
        except UnicodeError:
            pass  # the Encoder's own error, below
        else:
            return native
    encoded = [encoder.encode(arg) for arg in args]
    try:
        packed: bytes = hiredis.pack_command(
            tuple(arg if type(arg) is bytes else bytes(arg) for arg in encoded)  # type: ignore[arg-type]
        )
    except TypeError as exc:  # as redis-py's HiredisRespSerializer reports it
        raise DataError(exc) from exc
    return packed


def pack_arguments(encoder: Any, args: Sequence[EncodableT]) -> bytes:
    """``args`` as ``pack`` packs them into a command, without the command's first line (its
    count of arguments): a run of arguments to splice into a command packed in parts, whose
    bytes are ``array_header(total count)`` and then each run's, in order (decision 0097).

    Raises ``DataError`` as ``pack`` does.
    """
    packed = pack(encoder, args)
    return packed[packed.index(b"\n") + 1 :]


def array_header(count: int) -> bytes:
    """The first line of a command of ``count`` arguments, as ``pack`` writes it."""
    return b"*%d\r\n" % count


class ConnectionLender:
    """Connections of ``pool`` for the batcher's exchanges, kept between batches."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        # Sentinel's pool moves connections to a new primary only when they come back to it.
        self._keep = 0 if isinstance(pool, SentinelConnectionPool) else KEEP

    async def take(self) -> AbstractConnection:
        """An idle kept connection, or one from the pool (which waits for a free one, bounded
        by the pool's size and timeout, and raises ``ConnectionError`` when none comes)."""
        if self._idle:
            return self._idle.pop()
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        return connection

    async def give_back(self, connection: AbstractConnection) -> None:
        if len(self._idle) < self._keep:
            self._idle.append(connection)
        else:
            await self._pool.release(connection)

    async def aclose(self) -> None:
        """Give every kept connection back to the pool (before the pool is closed)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._pool.release(connection)


async def exchange(connection: AbstractConnection, data: bytes, count: int) -> list[Any]:
    """Write ``data`` (``count`` packed commands) on ``connection``; their ``count`` replies, in
    order. A reply that is a Redis error is returned in its place (a ``ResponseError``); a
    connection error or timeout raises, after one retry on a fresh connection if the
    connection's retry policy allows it (as redis-py retries a pipeline)."""

    async def once() -> list[Any]:
        return await _exchange_once(connection, data, count)

    async def drop(_error: Exception) -> None:
        await connection.disconnect()

    replies: list[Any] = await connection.retry.call_with_retry(once, drop)
    return replies


async def _exchange_once(connection: AbstractConnection, data: bytes, count: int) -> list[Any]:
    if not connection.is_connected:
        await connection.connect()  # type: ignore[no-untyped-call]
    elif _unclean(connection):
        await connection.disconnect()
        await connection.connect()  # type: ignore[no-untyped-call]
    if (
        connection.health_check_interval
        and asyncio.get_running_loop().time() > connection.next_health_check
    ):
        await connection.check_health()  # type: ignore[no-untyped-call]  # a PING (with its retry) on a connection left idle
    await _write(connection, data)
    if type(connection).read_response is not AbstractConnection.read_response:
        return await _read_each(connection, count)  # Sentinel's maps READONLY on its reads
    return await _read_all(connection, count)


def _unclean(connection: AbstractConnection) -> bool:
    # as the pool checks a connection it lends: closed, or bytes no one read
    reader: Any = connection._reader
    return reader is None or reader.at_eof() or bool(reader._buffer)


async def _write(connection: AbstractConnection, data: bytes) -> None:
    writer = connection._writer
    if writer is None or writer.transport.is_closing():
        raise RedisConnectionError("Connection closed by the server before write")
    try:
        writer.write(data)
        if writer.transport.get_write_buffer_size() > 0:  # only when the socket did not take it
            async with asyncio.timeout(connection.socket_timeout):
                await writer.drain()
    except TimeoutError as exc:
        await connection.disconnect(nowait=True)
        if _dead(exc):
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        await connection.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


async def _read_all(connection: AbstractConnection, count: int) -> list[Any]:
    """Each reply with the connection's parser, each within the socket timeout (one scope,
    moved on per reply rather than made anew)."""
    loop = asyncio.get_running_loop()
    timeout = connection.socket_timeout
    replies: list[Any] = []
    try:
        async with asyncio.timeout(None) as scope:
            for _ in range(count):
                if timeout:
                    scope.reschedule(loop.time() + timeout)
                replies.append(await connection._read_response_from_parser())
    except OSError as exc:  # TimeoutError among them
        await connection.disconnect(nowait=True)
        where = connection._host_error()
        if isinstance(exc, TimeoutError) and not _dead(exc):
            raise RedisTimeoutError(f"Timeout reading from {where}") from None
        raise RedisConnectionError(f"Error while reading from {where} : {exc.args}") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    if connection.health_check_interval:
        connection.next_health_check = loop.time() + connection.health_check_interval
    return replies


def _dead(exc: OSError) -> bool:
    """An OS-level ``ETIMEDOUT`` (the connection is dead, not slow: a connection error, as
    redis-py counts it) rather than our own timeout (which has no errno)."""
    return exc.errno is not None


async def _read_each(connection: AbstractConnection, count: int) -> list[Any]:
    """Each reply through the connection's own ``read_response`` (its timeout, its mapping)."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies

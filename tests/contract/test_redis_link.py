"""The batcher's link to a standalone Redis (``redis_link``): batches written one after another
on one connection get their replies in order, and what goes wrong mid-batch (a timeout, a reset
connection, a cancelled caller, a closed client) never hands a caller another call's reply.

A real Redis server, and for what a real one cannot be made to do on cue (reset a connection
after part of a batch, answer an error that means "try another connection"), a small fake one
that speaks RESP.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import hiredis
import pytest
import redis
import uvloop
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.stores.redis_batch import BatchingRedis, NotReplicatedError, _LinkBatcher
from broker.stores.redis_client import connection_pool

ECHO = "return ARGV[1]"
BUSY = """
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (tonumber(now[1]) - tonumber(start[1])) * 1000000 + tonumber(now[2]) - tonumber(start[2])
  >= tonumber(ARGV[1]) * 1000
return ARGV[2]
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[BatchingRedis]:
    batching = BatchingRedis.from_pool(connection_pool(redis_url))
    assert isinstance(batching.batcher, _LinkBatcher)
    yield batching
    await batching.aclose()


def _pending(client: BatchingRedis) -> int:
    link = client.batcher._server._link  # type: ignore[attr-defined]
    return len(link.pending) if link is not None else 0


async def test_batches_in_flight_together_get_their_replies_in_order(
    client: BatchingRedis,
) -> None:
    echo, busy = client.register_script(ECHO), client.register_script(BUSY)
    assert await echo(args=["warm"]) == b"warm"  # linked, scripts loaded
    await busy(args=[1, "loaded"])
    calls: list[asyncio.Future[Any]] = [asyncio.ensure_future(busy(args=[150, "busy"]))]
    for n in range(30):
        calls.append(asyncio.ensure_future(echo(args=[n])))
        if n % 3 == 2:
            await asyncio.sleep(0)  # the next calls are another batch, written at once
    await asyncio.sleep(0)
    assert _pending(client) >= 10  # every batch on the one connection, waiting for the busy one
    cancelled = [calls[4], calls[17]]  # their callers go away while their batches are out
    for call in cancelled:
        call.cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == b"busy"
    for n, result in enumerate(results[1:]):
        if calls[n + 1] in cancelled:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == str(n).encode()
    assert await echo(args=["after"]) == b"after"


async def test_a_timeout_mid_batch_fails_the_batches_in_flight_and_no_late_reply_is_read(
    redis_url: str,
) -> None:
    pool = BlockingConnectionPool.from_url(redis_url, socket_timeout=0.2, max_connections=4)
    client = BatchingRedis.from_pool(pool)
    echo, busy = client.register_script(ECHO), client.register_script(BUSY)
    try:
        assert await echo(args=["warm"]) == b"warm"
        await busy(args=[1, "loaded"])
        first = asyncio.gather(
            echo(args=["before"]), busy(args=[500, "late"]), echo(args=["after"]),
            return_exceptions=True,
        )  # fmt: skip
        await asyncio.sleep(0.05)
        second = await asyncio.gather(echo(args=["next batch"]), return_exceptions=True)
        replies = await first
        # The batch's first reply came; the busy one's did not within 0.2 s: the whole batch
        # fails (as a pipeline's read does), and so does the batch written behind it.
        assert all(isinstance(r, RedisTimeoutError) for r in [*replies, *second]), replies
        await asyncio.sleep(0.5)  # the script ends and its late reply is sent, to no one
        assert await echo(args=["mine"]) == b"mine"  # a fresh connection, its own reply
    finally:
        await client.aclose()


async def test_a_batch_in_flight_when_the_client_closes_fails_and_the_connection_goes_back(
    redis_url: str,
) -> None:
    pool = connection_pool(redis_url)
    client = BatchingRedis.from_pool(pool)
    busy = client.register_script(BUSY)
    await busy(args=[1, "loaded"])
    call = asyncio.ensure_future(busy(args=[200, "late"]))
    await asyncio.sleep(0.02)
    await client.aclose()
    with pytest.raises(RedisConnectionError):
        await call
    assert not pool._in_use_connections  # given back (and closed), not leaked
    with pytest.raises(RedisConnectionError):
        await busy(args=[1, "closed"])  # nothing goes out on a closed client


async def test_a_link_idle_over_the_health_check_interval_pings_with_its_next_batch(
    private_redis_url: str,  # the PINGs are counted server-wide
) -> None:
    pool = BlockingConnectionPool.from_url(private_redis_url, health_check_interval=0.2)
    client = BatchingRedis.from_pool(pool)
    echo = client.register_script(ECHO)
    plain = redis.Redis.from_url(private_redis_url)

    def pings() -> int:
        return int(plain.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))

    try:
        assert await echo(args=["warm"]) == b"warm"
        before = pings()
        assert await echo(args=["soon"]) == b"soon"
        assert pings() == before  # used within the interval: no PING
        await asyncio.sleep(0.3)
        assert await echo(args=["later"]) == b"later"
        assert pings() == before + 1
    finally:
        plain.close()
        await client.aclose()


def test_under_uvloop_the_link_takes_over_the_connection(redis_url: str) -> None:
    async def scenario() -> list[Any]:
        client = BatchingRedis.from_pool(connection_pool(redis_url))
        echo = client.register_script(ECHO)
        try:
            first = await asyncio.gather(*(echo(args=[n]) for n in range(5)))
            return [*first, await echo(args=["again"])]
        finally:
            await client.aclose()

    assert uvloop.run(scenario()) == [b"0", b"1", b"2", b"3", b"4", b"again"]


# --- a fake server: what a real one does not do on cue ----------------------------------------

HANDSHAKE = {b"PING": b"+PONG\r\n", b"HELLO": b"%1\r\n$5\r\nproto\r\n:3\r\n"}  # RESP3, as asked
Answer = Callable[[int, list[bytes]], bytes | None]  # (connection number, command) -> reply


class FakeRedis:
    """Answers the handshake, and each ``EVALSHA`` as ``answer`` says; ``None`` resets the
    connection there (RST), leaving the rest of its batch unanswered."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.evalshas: list[tuple[int, bytes]] = []  # (connection, ARGV[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self.connections = self.connections, self.connections + 1
        try:
            await self._serve(number, reader, writer)
        finally:
            writer.close()  # the client hung up (or was reset): this side's socket too

    async def _serve(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                name = command[0].upper()
                if name != b"EVALSHA":
                    writer.write(HANDSHAKE.get(name, b"+OK\r\n"))
                    continue
                self.evalshas.append((number, command[3]))
                reply = self.answer(number, command)
                if reply is None:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(reply)


@pytest.fixture
async def fake() -> AsyncIterator[Callable[[Answer], Any]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[FakeRedis, str]:
        fake = FakeRedis(answer)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return fake, f"redis://127.0.0.1:{port}/0"

    yield start
    for server in servers:
        server.close()


def _bulk(text: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text)


async def test_a_connection_reset_mid_batch_sends_the_batch_once_more_on_a_fresh_one(
    fake: Callable[[Answer], Any],
) -> None:
    def answer(connection: int, command: list[bytes]) -> bytes | None:
        if connection == 0 and command[3] != b"a":
            return None  # the first connection answers one call, then is reset
        return _bulk(b"%d:%s" % (connection, command[3]))

    server, url = await fake(answer)
    client = BatchingRedis.from_pool(connection_pool(url))
    echo = client.register_script(ECHO)
    try:
        replies = await asyncio.gather(*(echo(args=[arg]) for arg in "abc"))
    finally:
        await client.aclose()
    # The whole batch went again (one retry, the pool's policy), and each caller has its own
    # reply from the fresh connection, none from the first.
    assert replies == [b"1:a", b"1:b", b"1:c"]
    assert server.connections == 2


async def test_a_connection_reset_again_fails_the_batch_after_one_retry(
    fake: Callable[[Answer], Any],
) -> None:
    server, url = await fake(lambda _connection, _command: None)
    client = BatchingRedis.from_pool(connection_pool(url))
    echo = client.register_script(ECHO)
    try:
        replies = await asyncio.gather(*(echo(args=[a]) for a in "ab"), return_exceptions=True)
    finally:
        await client.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in replies), replies
    assert server.connections == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [(b"-LOADING Redis is loading the dataset in memory\r\n", BusyLoadingError),
     (b"-WRONGTYPE Operation against a key\r\n", ResponseError)],
)  # fmt: skip
async def test_an_error_reply_fails_as_it_fails_through_redis_py(
    fake: Callable[[Answer], Any], error: bytes, expected: type[Exception]
) -> None:
    """A connection-class error (LOADING) fails the batch and is retried once on a fresh
    connection, as redis-py retries it; any other fails its own call; each as redis-py's own
    client raises it on the same server."""
    results: list[tuple[type[BaseException], str, int]] = []
    for make in (BatchingRedis.from_pool, Redis.from_pool):
        server, url = await fake(lambda _connection, _command: error)
        client = make(connection_pool(url))
        try:
            with pytest.raises(expected) as raised:
                await client.register_script(ECHO)(args=["x"])
        finally:
            await client.aclose()
        results.append((type(raised.value), str(raised.value), server.connections))
    assert results[0] == results[1]


async def test_with_replica_acks_the_wait_ends_each_batch_and_its_reply_is_no_calls(
    client: BatchingRedis,
) -> None:
    echo = client.register_script(ECHO)
    assert await echo(args=["warm"]) == b"warm"
    client.batcher.require_replicas(1, 20)  # the session's server has no replica
    replies = await asyncio.gather(*(echo(args=[n]) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, NotReplicatedError) for r in replies), replies
    assert "0 of 1 replicas confirmed within 20 ms" in str(replies[0])
    client.batcher.require_replicas(0, 0)
    assert await asyncio.gather(echo(args=["a"]), echo(args=["b"])) == [b"a", b"b"]


async def test_a_reply_no_command_asked_for_is_never_read_as_the_next_calls(
    fake: Callable[[Answer], Any],
) -> None:
    def answer(connection: int, command: list[bytes]) -> bytes:
        mine = _bulk(b"%d:%s" % (connection, command[3]))
        return mine + _bulk(b"stray") if command[3] == b"first" else mine

    server, url = await fake(answer)
    client = BatchingRedis.from_pool(connection_pool(url))
    echo = client.register_script(ECHO)
    try:
        assert await echo(args=["first"]) == b"0:first"
        await asyncio.sleep(0.05)  # the stray reply comes in: that connection is out of step
        assert await echo(args=["second"]) == b"1:second"  # a fresh connection, its own reply
    finally:
        await client.aclose()
    assert server.connections == 2


class _OneSentinel:
    """Names the fake server as Sentinel's primary (what ``SentinelConnectionPool`` asks)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("redis://").removesuffix("/0").split(":")
        self.address = (host, int(port))

    async def discover_master(self, _service: str) -> tuple[str, int]:
        return self.address


async def test_behind_sentinel_readonly_from_a_demoted_primary_moves_the_batch_on(
    fake: Callable[[Answer], Any],
) -> None:
    """As ``SentinelManagedConnection`` reads it: ``READONLY`` from the primary means it was
    demoted; the batch goes again on a fresh connection, which asks Sentinel where to go."""

    def answer(connection: int, command: list[bytes]) -> bytes:
        if connection == 0:
            return b"-READONLY You can't write against a read only replica.\r\n"
        return _bulk(b"%d:%s" % (connection, command[3]))

    server, url = await fake(answer)
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    pool = SentinelConnectionPool("mymaster", _OneSentinel(url), is_master=True, retry=retry)
    client = BatchingRedis(connection_pool=pool)
    assert isinstance(client.batcher, _LinkBatcher)
    echo = client.register_script(ECHO)
    try:
        assert await asyncio.gather(echo(args=["a"]), echo(args=["b"])) == [b"1:a", b"1:b"]
    finally:
        await client.aclose()
    assert server.connections == 2

"""``BatchingRedis``: scripts called together share one round trip, and each caller still gets
its own reply or error, exactly as if it had called alone (a real Redis server), through a
restart and a timeout too; on a cluster (``BatchingRedisCluster``) the pipelines of different
nodes run at the same time."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.settings import StoreSettings
from broker.stores.redis_batch import BatchingRedis, BatchingRedisCluster
from broker.stores.redis_client import connection_pool, open_redis
from testkit.procs import free_port
from testkit.redis_process import stop_redis_server

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
APPEND = "return redis.call('APPEND', KEYS[1], ARGV[1])"
PICKY = (
    "if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. ARGV[1]) end "
    "return ARGV[1]"
)


# Holds its node busy for ARGV[1] ms (by the server's clock), then answers which node it ran on.
BUSY = """
local start = redis.call('TIME')
local start_ms = tonumber(start[1]) * 1000 + tonumber(start[2]) / 1000
repeat
  local now = redis.call('TIME')
until tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000 - start_ms >= tonumber(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[2]
"""
BUSY_MS = 300


@pytest.fixture
async def client(private_redis_url: str) -> AsyncIterator[BatchingRedis]:
    # A server of this module's own: the round trips are counted server-wide, and one test
    # flushes the scripts.
    batching = BatchingRedis.from_pool(connection_pool(private_redis_url))
    yield batching
    await batching.aclose()


def reads_processed(plain: redis.Redis) -> int:
    """Redis's count of socket reads from clients: one per round trip (one batch is read in
    one go), counted by the server whatever the client does."""
    return int(plain.info("stats")["total_reads_processed"])


@pytest.fixture
def plain(private_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis_url)
    yield client
    client.close()


async def test_concurrent_calls_share_a_round_trip_and_each_gets_its_own_reply(
    client: BatchingRedis, redis_key_prefix: str, plain: redis.Redis
) -> None:
    incr = client.register_script(INCR)
    key = f"{redis_key_prefix}:n"
    assert await incr(keys=[key], args=[0]) == 0  # connected, script loaded
    before = reads_processed(plain)
    replies = await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(50)))
    round_trips = reads_processed(plain) - before - 1  # less the INFO that asked
    assert sorted(replies) == list(range(1, 51))  # every call ran once, each saw its own reply
    assert 1 <= round_trips <= 2  # not 50 round trips


async def test_a_lone_call_is_one_round_trip(
    client: BatchingRedis, redis_key_prefix: str, plain: redis.Redis
) -> None:
    incr = client.register_script(INCR)
    assert await incr(keys=[f"{redis_key_prefix}:n"], args=[5]) == 5
    before = reads_processed(plain)
    assert await incr(keys=[f"{redis_key_prefix}:n"], args=[5]) == 10
    assert reads_processed(plain) - before - 1 == 1


async def test_an_argument_redis_cannot_take_fails_only_its_own_call(
    client: BatchingRedis, redis_key_prefix: str
) -> None:
    incr = client.register_script(INCR)
    key = f"{redis_key_prefix}:n"
    results = await asyncio.gather(
        incr(keys=[key], args=[1]), incr(keys=[key], args=[True]), incr(keys=[key], args=[2]),
        return_exceptions=True,
    )  # fmt: skip
    assert sorted(r for r in results if isinstance(r, int)) == [1, 3]
    assert isinstance(results[1], DataError) and "'bool'" in str(results[1])


async def test_an_error_reaches_only_the_call_that_caused_it(client: BatchingRedis) -> None:
    picky = client.register_script(PICKY)
    results = await asyncio.gather(
        picky(keys=[], args=["a"]),
        picky(keys=[], args=["bad"]),
        picky(keys=[], args=["c"]),
        return_exceptions=True,
    )
    assert results[0] == b"a" and results[2] == b"c"
    assert isinstance(results[1], ResponseError) and "refused bad" in str(results[1])


async def test_scripts_redis_lost_are_loaded_again(
    client: BatchingRedis, private_redis_url: str, redis_key_prefix: str
) -> None:
    incr = client.register_script(INCR)
    key = f"{redis_key_prefix}:n"
    assert await incr(keys=[key], args=[1]) == 1
    plain = redis.Redis.from_url(private_redis_url)
    try:
        plain.script_flush()  # as after a Redis restart
    finally:
        plain.close()
    replies = await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(10)))
    assert sorted(replies) == list(range(2, 12))


async def _in_queue_order(client: BatchingRedis | BatchingRedisCluster, prefix: str) -> None:
    """An INCRBY whose script Redis has never seen, queued before an APPEND on the same key
    whose script it holds: in queue order, INCRBY makes the key "0" and APPEND "0int". (A call
    that met NOSCRIPT used to run again after the batch, so the APPEND ran first.)"""
    incr = client.register_script(f"-- {uuid.uuid4().hex}\n{INCR}")  # never loaded anywhere
    append = client.register_script(APPEND)
    await append(keys=[f"{prefix}:{{o}}:warm"], args=["x"])  # Redis holds APPEND's script
    key = f"{prefix}:{{o}}"
    replies = await asyncio.gather(
        incr(keys=[key], args=[0]), append(keys=[key], args=["int"]), return_exceptions=True
    )
    assert replies == [0, 4]


async def test_calls_of_a_batch_run_in_queue_order_when_a_script_is_new(
    client: BatchingRedis, redis_key_prefix: str
) -> None:
    await _in_queue_order(client, redis_key_prefix)


async def test_when_redis_is_unreachable_every_call_fails(unused_tcp_port: int) -> None:
    client = BatchingRedis.from_pool(connection_pool(f"redis://127.0.0.1:{unused_tcp_port}/0"))
    incr = client.register_script(INCR)
    try:
        results = await asyncio.gather(
            *(incr(keys=["k"], args=[1]) for _ in range(5)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results), results


async def test_after_a_redis_restart_kept_connections_reconnect_and_scripts_load_again(
    redis_server_factory: Callable[[int], subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    server = redis_server_factory(port)
    client = BatchingRedis.from_pool(connection_pool(f"redis://127.0.0.1:{port}/0"))
    incr = client.register_script(INCR)
    try:
        assert await asyncio.gather(*(incr(keys=["k"], args=[1]) for _ in range(3))) == [1, 2, 3]
        stop_redis_server(server)
        redis_server_factory(port)  # empty, and knows no script
        # The kept connection is dead: the batch is retried once on a fresh one, which gets
        # NOSCRIPT, so the script is loaded and run again; each call once.
        replies = await asyncio.gather(*(incr(keys=["k"], args=[1]) for _ in range(3)))
    finally:
        await client.aclose()
    assert sorted(replies) == [1, 2, 3]


async def test_a_reply_that_came_too_late_is_never_read_as_the_next_calls(
    redis_url: str, redis_key_prefix: str
) -> None:
    pool = BlockingConnectionPool.from_url(redis_url, socket_timeout=0.2, max_connections=4)
    client = BatchingRedis.from_pool(pool)
    busy = client.register_script(BUSY)
    try:
        with pytest.raises(RedisTimeoutError):
            await busy(keys=[f"{redis_key_prefix}:slow"], args=[500, "late"])
        await asyncio.sleep(0.5)  # the script ends and its late reply is sent
        # The timed-out connection was dropped: this call's reply is its own, not "late".
        assert await busy(keys=[f"{redis_key_prefix}:fast"], args=[1, "mine"]) == b"mine"
    finally:
        await client.aclose()


# --- on Redis Cluster: one pipeline per node, the nodes at once --------------------------------


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[BatchingRedisCluster]:
    settings = StoreSettings(backend="redis", redis_mode="cluster", redis_url=redis_cluster_url)
    client = open_redis(settings, redis_class=BatchingRedis, cluster_class=BatchingRedisCluster)
    assert isinstance(client, BatchingRedisCluster)
    yield client
    await client.aclose()


async def test_on_a_cluster_calls_on_different_nodes_run_at_once(
    cluster_client: BatchingRedisCluster, redis_key_prefix: str
) -> None:
    client = cluster_client
    busy = client.register_script(BUSY)
    await client.initialize()
    # One key per master: keys whose slots the three masters own.
    by_node: dict[str, str] = {}
    for n in range(200):
        key = f"{redis_key_prefix}:{{k{n}}}"
        by_node.setdefault(client.get_node_from_key(key).name, key)
    assert len(by_node) == 3
    await asyncio.gather(*(busy(keys=[k], args=[1, n]) for n, k in by_node.items()))  # load
    started = time.monotonic()
    replies = await asyncio.gather(
        *(busy(keys=[key], args=[BUSY_MS, node]) for node, key in by_node.items())
    )
    elapsed_ms = (time.monotonic() - started) * 1000
    assert [reply.decode() for reply in replies] == list(by_node)  # each its own reply
    # One after another would take 3 x 300 ms; at once, one node's time plus scheduling.
    assert elapsed_ms < 2.5 * BUSY_MS, elapsed_ms


async def test_on_a_cluster_calls_of_a_batch_run_in_queue_order_when_a_script_is_new(
    cluster_client: BatchingRedisCluster, redis_key_prefix: str
) -> None:
    await _in_queue_order(cluster_client, redis_key_prefix)

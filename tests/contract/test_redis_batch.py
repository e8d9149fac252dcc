"""``BatchingRedis``: scripts called together share one pipeline, and each caller still gets
its own reply or error, exactly as if it had called alone (a real Redis server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from broker.stores.redis_batch import BatchingRedis
from broker.stores.redis_client import connection_pool

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
PICKY = (
    "if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. ARGV[1]) end "
    "return ARGV[1]"
)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[BatchingRedis]:
    batching = BatchingRedis.from_pool(connection_pool(redis_url))
    yield batching
    await batching.aclose()


def count_pipelines(client: BatchingRedis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    opened: list[int] = []
    real = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", pipeline)
    return opened


async def test_concurrent_calls_share_a_round_trip_and_each_gets_its_own_reply(
    client: BatchingRedis, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    incr = client.register_script(INCR)
    opened = count_pipelines(client, monkeypatch)
    key = f"{redis_key_prefix}:n"
    replies = await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(50)))
    assert sorted(replies) == list(range(1, 51))  # every call ran once, each saw its own reply
    assert 1 <= len(opened) <= 2  # not 50 round trips


async def test_a_lone_call_goes_out_without_a_pipeline(
    client: BatchingRedis, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    incr = client.register_script(INCR)
    opened = count_pipelines(client, monkeypatch)
    assert await incr(keys=[f"{redis_key_prefix}:n"], args=[5]) == 5
    assert opened == []


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
    client: BatchingRedis, redis_url: str, redis_key_prefix: str
) -> None:
    incr = client.register_script(INCR)
    key = f"{redis_key_prefix}:n"
    assert await incr(keys=[key], args=[1]) == 1
    plain = redis.Redis.from_url(redis_url)
    try:
        plain.script_flush()  # as after a Redis restart
    finally:
        plain.close()
    replies = await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(10)))
    assert sorted(replies) == list(range(2, 12))


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

"""A settle no one awaits (``BudgetLedger.settle_soon``, decision 0094): on the Redis store its
script is queued with a callback instead of a future. It must charge what ``settle`` charges,
tell its ``done`` once, and fail and retry as ``settle`` does (decision 0020); a callback is told
its reply without disturbing the other calls of its batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from broker.budgets.model import Limit, Scope, Usage
from broker.errors import StoreUnavailableError
from broker.settings import StoreSettings
from broker.stores.base import StoreBackend
from broker.stores.budget_base import BudgetLedger, Reservation
from broker.stores.factory import open_backend
from broker.stores.memory import MemoryBackend
from broker.stores.redis_batch import BatchingRedis

SCOPES = (
    Scope("agent", "planner", (Limit("calls", "day", 5),)),
    Scope("edge", "planner>researcher", (Limit("calls", "day", 5),)),
)


def _redis(url: str, prefix: str, shards: int = 1) -> StoreBackend:
    return open_backend(
        StoreSettings(backend="redis", redis_url=url, key_prefix=prefix, budget_shards=shards)
    )


async def _settled_soon(ledger: BudgetLedger, held: Reservation) -> list[BaseException | None]:
    told: list[BaseException | None] = []
    ended = asyncio.Event()

    def done(failure: BaseException | None) -> None:
        told.append(failure)
        ended.set()

    ledger.settle_soon(held, Usage(calls=1), done)
    async with asyncio.timeout(5):
        await ended.wait()
    await asyncio.sleep(0.01)  # told once: nothing more comes
    return told


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_settle_no_one_awaits_charges_as_settle_does(
    redis_url: str, redis_key_prefix: str, shards: int
) -> None:
    backends = [MemoryBackend(), _redis(redis_url, redis_key_prefix, shards)]
    try:
        for backend in backends:
            ledger = backend.stores().budgets
            held = await ledger.reserve(SCOPES, Usage(calls=1), ttl_s=30)
            assert isinstance(held, Reservation)
            assert await _settled_soon(ledger, held) == [None]
            statuses = await ledger.status(SCOPES)
            assert [(s.used, s.reserved) for s in statuses] == [(1, 0), (1, 0)]
            assert await _settled_soon(ledger, held) == [None]  # settled already: no change
            statuses = await ledger.status(SCOPES)
            assert [(s.used, s.reserved) for s in statuses] == [(1, 0), (1, 0)]
    finally:
        for backend in backends:
            await backend.close()


async def test_a_settle_no_one_awaits_refuses_a_bad_amount_as_settle_does() -> None:
    backend = _redis("redis://127.0.0.1:9/0", "p")
    held = Reservation("r1", SCOPES, Usage(calls=1), time.time() + 30)
    try:
        told: list[BaseException | None] = []
        backend.stores().budgets.settle_soon(held, Usage(calls=-1), told.append)
        assert len(told) == 1
        assert isinstance(told[0], ValueError)
    finally:
        await backend.close()


async def test_a_settle_no_one_awaits_is_retried_when_redis_is_down(
    unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _redis(f"redis://127.0.0.1:{unused_tcp_port}/0", "p")
    ledger = backend.stores().budgets
    added: list[tuple[str, float]] = []
    monkeypatch.setattr(
        ledger, "_late", type("L", (), {"add": lambda _, attempt, *, until, what: added.append(
            (what, until))})(),
    )  # fmt: skip
    expires_at = time.time() + 30
    held = Reservation("r1", SCOPES, Usage(calls=1), expires_at)
    try:
        told = await _settled_soon(ledger, held)
    finally:
        await backend.close()
    assert len(told) == 1
    assert isinstance(told[0], StoreUnavailableError)
    assert isinstance(told[0].__cause__, redis.RedisError)
    assert [what for what, _ in added] == ["settle of reservation r1 on budget shard 0"]
    assert expires_at - 1 < added[0][1] < expires_at + 1


async def test_a_callback_gets_its_reply_and_one_that_raises_disturbs_no_other_call(
    redis_url: str, redis_key_prefix: str
) -> None:
    client = BatchingRedis.from_url(redis_url)
    script = client.register_script("return ARGV[1]")
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    replies: list[Any] = []

    def broken(reply: Any) -> None:
        raise RuntimeError("a callback's own bug")

    try:
        await script(keys=[f"{redis_key_prefix}:k"], args=["warm"])  # loaded
        batcher = client.batcher
        batcher.notify(script, [f"{redis_key_prefix}:k"], ["one"], replies.append)
        batcher.notify(script, [f"{redis_key_prefix}:k"], ["two"], broken)
        batcher.notify(script, [f"{redis_key_prefix}:k"], [True], replies.append)  # refused
        awaited = batcher.queue(script, [f"{redis_key_prefix}:k"], ["three"])
        assert isinstance(replies[0], redis.DataError)  # told at once, nothing sent
        async with asyncio.timeout(5):
            assert await awaited == b"three"
        assert replies[1:] == [b"one"]
        assert [type(context["exception"]) for context in reported] == [RuntimeError]
        assert await script(keys=[f"{redis_key_prefix}:k"], args=["four"]) == b"four"
    finally:
        loop.set_exception_handler(None)
        await client.aclose()

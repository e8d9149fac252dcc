"""The memory and Redis budget ledgers, driven through the same random histories, agree.

Random reserves (over random subsets of scopes, in random order), settles (below, at and above
what was reserved), releases, repeats of both, expiry sweeps, and the passing of time that lets
short reservations die. After every step both ledgers report the same status, and no limit has
``used + reserved`` above it. Time is real (Redis's clock cannot be patched): at most one short
sleep per history keeps the test bounded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.budget_base import BudgetRefusal, Reservation
from broker.stores.factory import open_backend
from broker.stores.memory_budget import MemoryBudgetLedger

_T = TypeVar("_T")
SHORT_TTL_S = 0.3
LONG_TTL_S = 600

SCOPES = (
    Scope("agent", "a", (Limit("calls", "minute", 6), Limit("cost_micro", "day", 1000))),
    Scope(
        "team", "role:user", (Limit("tokens_in", "hour", 300), Limit("tokens_out", "month", 300))
    ),
    Scope("tree", "t1", (Limit("calls", "lifetime", 9), Limit("cost_micro", "lifetime", 1500))),
    Scope("edge", "a>b", (Limit("cost_micro", "minute", 700),)),
)

amounts = st.builds(
    Usage,
    calls=st.integers(0, 2),
    tokens_in=st.integers(0, 120),
    tokens_out=st.integers(0, 120),
    cost_micro=st.integers(0, 400),
)
scope_lists = st.permutations(SCOPES).flatmap(
    lambda ordered: st.integers(0, len(ordered)).map(lambda n: tuple(ordered[:n]))
)


def _away_from_minute_edges() -> None:
    """Wait out the last 100 ms of a minute, so both ledgers see the same windows."""
    into_minute = time.time() % 60
    if into_minute > 59.9:
        time.sleep(60.02 - into_minute)


class LedgersAgree(RuleBasedStateMachine):
    redis_url = ""
    shards = 1  # [store] budget_shards of the Redis ledger

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.prefix = f"test-sm-{uuid.uuid4().hex}"
        settings_ = StoreSettings(
            backend="redis",
            redis_url=self.redis_url,
            key_prefix=self.prefix,
            budget_shards=self.shards,
        )
        self.backend = open_backend(settings_)
        self.memory = MemoryBudgetLedger()
        self.redis = self.backend.stores().budgets
        # Pairs (memory's, Redis's) of live reservations, with whether they are short-lived.
        self.live: list[tuple[Reservation, Reservation, bool]] = []
        self.ended: list[tuple[Reservation, Reservation]] = []
        self.slept = False

    def run(self, work: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(work)

    @rule(scopes=scope_lists, wanted=amounts, short=st.booleans())
    def reserve(self, scopes: tuple[Scope, ...], wanted: Usage, short: bool) -> None:
        _away_from_minute_edges()
        ttl = SHORT_TTL_S if short else LONG_TTL_S
        here = self.run(self.memory.reserve(scopes, wanted, ttl_s=ttl))
        there = self.run(self.redis.reserve(scopes, wanted, ttl_s=ttl))
        if isinstance(here, BudgetRefusal):
            assert here == there
            return
        assert isinstance(there, Reservation), (here, there)
        assert (here.scopes, here.amounts) == (there.scopes, there.amounts) == (scopes, wanted)
        self.live.append((here, there, short))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), settle=st.booleans(), factor=st.sampled_from([0, 0.5, 1, 1.5]))
    def finish(self, data: st.DataObject, settle: bool, factor: float) -> None:
        here, there, _ = self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))
        self._finish(here, there, settle, factor)
        self.ended.append((here, there))

    @precondition(lambda self: self.ended)
    @rule(data=st.data(), settle=st.booleans())
    def finish_again(self, data: st.DataObject, settle: bool) -> None:
        here, there = data.draw(st.sampled_from(self.ended))
        self._finish(here, there, settle, 1)

    @rule()
    def expire(self) -> None:
        _away_from_minute_edges()
        assert self.run(self.memory.expire()) == self.run(self.redis.expire())

    @precondition(lambda self: not self.slept and any(short for *_, short in self.live))
    @rule()
    def let_short_reservations_die(self) -> None:
        time.sleep(SHORT_TTL_S + 0.05)
        self.slept = True
        self.live = [entry for entry in self.live if not entry[2]]

    @invariant()
    def same_status_and_never_overspent(self) -> None:
        _away_from_minute_edges()
        here = self.run(self.memory.status(SCOPES))
        there = self.run(self.redis.status(SCOPES))
        assert here == there
        for status in here:
            assert status.used + status.reserved <= status.limit, status

    def _finish(self, here: Reservation, there: Reservation, settle: bool, factor: float) -> None:
        _away_from_minute_edges()
        if not settle:
            self.run(self.memory.release(here))
            self.run(self.redis.release(there))
            return
        spent = Usage(
            **{m: int(getattr(here.amounts, m) * factor) for m in Usage.__struct_fields__}
        )
        self.run(self.memory.settle(here, spent))
        self.run(self.redis.settle(there, spent))

    def teardown(self) -> None:
        try:
            self.run(self.backend.close())
        finally:
            self.loop.close()
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def test_memory_and_redis_ledgers_agree(redis_url: str) -> None:
    LedgersAgree.redis_url = redis_url
    run_state_machine_as_test(
        LedgersAgree,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


class ShardedLedgersAgree(LedgersAgree):
    """The same histories on a sharded Redis ledger, compared after an expiry sweep.

    A sharded reserve reclaims dead reservations in the shards it touches only (their limits are
    checked after that, as with one shard), so one that died in another shard still counts in
    its status until a sweep or a reserve there reclaims it, where the memory ledger has
    reclaimed it already; and a sweep's count then differs. After a sweep on both they agree.
    """

    @rule()
    def expire(self) -> None:
        _away_from_minute_edges()
        self.run(self.memory.expire())
        self.run(self.redis.expire())

    @invariant()
    def same_status_and_never_overspent(self) -> None:
        self.expire()
        super().same_status_and_never_overspent()


@pytest.mark.parametrize("shards", [2, 4])
def test_memory_and_sharded_redis_ledgers_agree(redis_url: str, shards: int) -> None:
    ShardedLedgersAgree.redis_url, ShardedLedgersAgree.shards = redis_url, shards
    run_state_machine_as_test(
        ShardedLedgersAgree,
        settings=settings(
            max_examples=15,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

"""Budgets over 1, 2 and 4 shards, raced by three brokers' clients: never overspent, and
every hold accounted for.

Random waves of reserves (random subsets of scopes whose limits sit in different shards) are
sent at once from three separate clients (as three broker replicas would), so the per-shard
scripts of different reserves interleave on Redis; then each admitted reservation is settled
(below, at or above what it held) or released. After every wave, for every limit: ``used +
reserved <= limit`` (never overspent), ``reserved`` is exactly what the live reservations hold
(a reserve refused by one shard left nothing held in the others) and ``used`` exactly what the
settles charged. Lifetime windows only, so no window edge can move a counter.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.budgets.model import METRICS, Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.stores.factory import open_backend
from broker.stores.redis_budget import budget_shard_of

CLIENTS = 3
SCOPES = (
    Scope("agent", "a", (Limit("calls", "lifetime", 5), Limit("cost_micro", "lifetime", 900))),
    Scope("team", "role:user", (Limit("calls", "lifetime", 7),)),
    Scope("tree", "t1", (Limit("tokens_out", "lifetime", 400),)),
    Scope("edge", "a>b", (Limit("cost_micro", "lifetime", 700),)),
)

amounts = st.builds(
    Usage,
    calls=st.integers(0, 2),
    tokens_out=st.integers(0, 150),
    cost_micro=st.integers(0, 300),
)
scope_lists = st.permutations(SCOPES).flatmap(
    lambda ordered: st.integers(1, len(ordered)).map(lambda n: tuple(ordered[:n]))
)
requests = st.tuples(st.integers(0, CLIENTS - 1), scope_lists, amounts)
waves = st.lists(st.lists(requests, min_size=1, max_size=12), min_size=1, max_size=4)
# How each admitted reservation ends: released (None) or settled at this share of its hold.
endings = st.lists(st.sampled_from([None, 0.0, 0.5, 1.0, 1.5]), min_size=1, max_size=8)


def test_the_scopes_lie_in_several_shards() -> None:
    for shards in (2, 4):
        assert len({budget_shard_of(scope.key(), shards) for scope in SCOPES}) > 1


class Books:
    """What the ledger must show: the holds of live reservations, the charges of settles."""

    def __init__(self) -> None:
        self.reserved: dict[tuple[str, str], int] = {}
        self.used: dict[tuple[str, str], int] = {}

    def add(self, book: dict[tuple[str, str], int], reservation: Reservation, of: Usage) -> None:
        for scope in reservation.scopes:
            for limit in scope.limits:
                key = (scope.key(), limit.metric)
                book[key] = book.get(key, 0) + of.of(limit.metric)


Plan = list[list[tuple[int, tuple[Scope, ...], Usage]]]


async def _waves(shards: int, redis_url: str, plan: Plan, ends: list[float | None]) -> None:
    prefix = f"test-shards-{uuid.uuid4().hex}"
    settings_ = StoreSettings(
        backend="redis", redis_url=redis_url, key_prefix=prefix, budget_shards=shards
    )
    backends = [open_backend(settings_) for _ in range(CLIENTS)]
    ledgers: list[BudgetLedger] = [backend.stores().budgets for backend in backends]
    books = Books()
    try:
        for wave in plan:
            results = await asyncio.gather(
                *(ledgers[client].reserve(scopes, wanted, ttl_s=600)
                  for client, scopes, wanted in wave)
            )  # fmt: skip
            admitted = [result for result in results if isinstance(result, Reservation)]
            assert all(isinstance(r, Reservation | BudgetRefusal) for r in results)
            for reservation in admitted:
                books.add(books.reserved, reservation, reservation.amounts)
            await _check(ledgers[0], books)
            for index, reservation in enumerate(admitted):
                share = ends[index % len(ends)]
                books.add(books.reserved, reservation, _negated(reservation.amounts))
                if share is None:
                    await ledgers[index % CLIENTS].release(reservation)
                    continue
                spent = _scaled(reservation.amounts, share)
                await ledgers[index % CLIENTS].settle(reservation, spent)
                books.add(books.used, reservation, _capped(spent, reservation.amounts))
            await _check(ledgers[0], books)
    finally:
        for backend in backends:
            await backend.close()


async def _check(ledger: BudgetLedger, books: Books) -> None:
    for status in await ledger.status(SCOPES):
        key = (status.scope, status.metric)
        assert status.used + status.reserved <= status.limit, status
        assert status.reserved == books.reserved.get(key, 0), status
        assert status.used == books.used.get(key, 0), status


def _scaled(usage: Usage, share: float) -> Usage:
    return Usage(**{metric: int(usage.of(metric) * share) for metric in METRICS})


def _capped(spent: Usage, held: Usage) -> Usage:
    return Usage(**{metric: min(spent.of(metric), held.of(metric)) for metric in METRICS})


def _negated(usage: Usage) -> Usage:
    return Usage(**{metric: -usage.of(metric) for metric in METRICS})


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_racing_brokers_never_overspend_and_leave_no_hold(redis_url: str, shards: int) -> None:
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(plan=waves, ends=endings)
    def run(plan: Plan, ends: list[float | None]) -> None:
        asyncio.run(_waves(shards, redis_url, plan, ends))

    run()

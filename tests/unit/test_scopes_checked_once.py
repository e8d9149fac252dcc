"""A call's scopes are checked and packed once per tuple (decision 0086): ``check_scopes``
passes a tuple it passed before without looking again, and the Redis ledger keeps each tuple's
shards and script arguments. Neither may let through what the full check refuses."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from broker.budgets import model
from broker.budgets.model import Limit, Scope, Usage, check_scopes
from broker.errors import StoreUnavailableError
from broker.stores.budget_base import Reservation
from broker.stores.redis_budget import RedisBudgetLedger


class _Client:
    def register_script(self, source: str) -> object:
        return object()


def _scopes() -> tuple[Scope, ...]:
    return (
        Scope("agent", "planner", (Limit("calls", "day", 5),)),
        Scope(
            "edge",
            "planner>researcher",
            (Limit("calls", "hour", 2), Limit("cost_micro", "day", 9)),
        ),
    )


def test_a_tuple_that_passed_is_remembered_and_passes_again() -> None:
    scopes = _scopes()
    check_scopes(scopes)
    assert model._CHECKED[id(scopes)] is scopes
    check_scopes(scopes)


def test_a_refused_tuple_is_refused_every_time() -> None:
    twice = (Scope("agent", "a", (Limit("calls", "day", 1),)),) * 2
    for _ in range(2):
        with pytest.raises(ValueError, match="once"):
            check_scopes(twice)
    assert id(twice) not in model._CHECKED


def test_an_equal_tuple_is_checked_on_its_own() -> None:
    bad: Any = (Scope("agent", "a", (Limit("calls", "day", -1),)),)
    check_scopes(_scopes())
    with pytest.raises(ValueError, match="limit"):
        check_scopes(bad)


def test_lists_and_limits_held_in_lists_are_not_remembered() -> None:
    listed = list(_scopes())
    check_scopes(listed)
    assert id(listed) not in model._CHECKED
    loose: Any = (Scope("agent", "b", [Limit("calls", "day", 1)]),)
    check_scopes(loose)
    assert id(loose) not in model._CHECKED
    loose[0].limits.append(Limit("calls", "day", 2))  # now twice in one window
    with pytest.raises(ValueError, match="twice"):
        check_scopes(loose)


def test_the_memo_is_bounded() -> None:
    kept = [
        (Scope("agent", f"a{n}", (Limit("calls", "day", 1),)),)
        for n in range(model._CHECKED_MAX + 1)
    ]
    for scopes in kept:
        check_scopes(scopes)
    assert len(model._CHECKED) <= model._CHECKED_MAX


@pytest.mark.parametrize("shards", [1, 3])
def test_the_ledger_packs_a_tuple_once_and_as_before(shards: int) -> None:
    ledger = RedisBudgetLedger(_Client(), "p", shards=shards)  # type: ignore[arg-type]
    scopes = _scopes()
    first = ledger._plan(scopes)
    assert ledger._plan(scopes) is first
    # The same as working it out from a list (never kept), which is how it was done per call.
    listed = ledger._plan(list(scopes))
    assert listed is not first and (listed.shards, listed.limits) == (first.shards, first.limits)
    expected: dict[int, list[Any]] = {}
    for scope in scopes:
        shard = ledger._shard(scope.key())
        for limit in scope.limits:
            expected.setdefault(shard, []).extend(
                [scope.key(), limit.metric, limit.window, limit.limit]
            )
    assert (first.shards, first.limits) == (list(expected), expected)
    assert ledger._shards_of(()) == [0]


def test_the_ledger_keeps_a_bounded_number_of_tuples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.stores.redis_budget._PLANS_MAX", 2)
    ledger = RedisBudgetLedger(_Client(), "p")  # type: ignore[arg-type]
    for _ in range(5):
        ledger._plan(_scopes())
    assert len(ledger._plans) <= 2


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_settle_a_shard_fails_is_named_and_timed_for_its_retries(
    monkeypatch: pytest.MonkeyPatch, shards: int
) -> None:
    """The name and deadline of a failed settle's retries, worked out only when one fails."""
    ledger = RedisBudgetLedger(_Client(), "p", shards=shards)  # type: ignore[arg-type]
    added: list[tuple[str, float]] = []
    monkeypatch.setattr(
        ledger._late, "add", lambda attempt, *, until, what: added.append((what, until))
    )

    async def refused() -> Any:
        raise redis.ConnectionError("down")

    monkeypatch.setattr("broker.stores.redis_budget._send", lambda *_: refused())
    scopes = _scopes()
    expires_at = time.time() + 30
    held = Reservation("r1", scopes, Usage(calls=1), expires_at)
    with pytest.raises(StoreUnavailableError):
        await ledger.settle(held, Usage(calls=1))
    assert [what for what, _ in added] == [
        f"settle of reservation r1 on budget shard {shard}" for shard in ledger._shards_of(scopes)
    ]
    assert all(expires_at - 1 < until < expires_at + 1 for _, until in added)

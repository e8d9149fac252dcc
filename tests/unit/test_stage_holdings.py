"""The stages that hold something for the rest of the call (fan-out slots, budget reservations)
with the memory stores: taken before the call goes on, let go of once it ends, however it ends."""

from __future__ import annotations

import pytest
from stage_kit import MINTER, Next, ctx, stream_of

from broker.budgets.scopes import ConfiguredScopes
from broker.delegation.tokens import hop_scope
from broker.errors import (
    BudgetExhaustedError,
    FanOutConcurrentExceededError,
    HopLimitExceededError,
    PolicyDeniedError,
    RateLimitedError,
)
from broker.policy.roles import AgentRoles
from broker.protocols.a2a.operations import GET_TASK
from broker.settings import (
    BudgetLimitSettings,
    BudgetSettings,
    DelegationSettings,
    GuardLimits,
    LimitSettings,
    RateSettings,
)
from broker.stages.budget import HopBudget
from broker.stages.guards import CascadeGuards
from broker.stores.base import Stores
from broker.stores.memory import MemoryBackend
from broker.types import MediationContext, Outcome


def _delegated() -> MediationContext:
    _, parent = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    made = ctx()
    made.parent, made.chain = parent, ("origin", "a")
    return made


async def _in_flight(stores: Stores, child: MediationContext) -> int:
    assert child.parent is not None
    usage = await stores.delegation_counters.usage(child.parent.jti, child.parent.tree)
    return usage.in_flight


async def _refuse(_: MediationContext) -> Outcome:
    raise PolicyDeniedError


# --- CascadeGuards -------------------------------------------------------------------------------


def _guards(stores: Stores, **limits: int) -> CascadeGuards:
    delegation = DelegationSettings(limits=GuardLimits(**limits))
    return CascadeGuards(stores.delegation_counters, delegation, LimitSettings())


async def test_a_child_holds_a_slot_while_it_runs_and_frees_it_when_answered() -> None:
    stores = MemoryBackend().stores()
    guards = _guards(stores, max_children_concurrent=1)
    first = _delegated()
    assert first.parent is not None
    seen_in_flight: list[int] = []

    async def answer(c: MediationContext) -> Outcome:
        assert c.parent is not None
        usage = await stores.delegation_counters.usage(c.parent.jti, c.parent.tree)
        seen_in_flight.append(usage.in_flight)
        return await Next()(c)

    await guards(first, answer)
    after = await stores.delegation_counters.usage(first.parent.jti, first.parent.tree)
    assert seen_in_flight == [1] and after.in_flight == 0 and after.total_children == 1


async def test_a_refusal_further_in_frees_the_slot_and_a_full_parent_refuses_the_next() -> None:
    stores = MemoryBackend().stores()
    guards = _guards(stores, max_children_concurrent=1)
    child = _delegated()
    assert child.parent is not None
    with pytest.raises(PolicyDeniedError):
        await guards(child, _refuse)
    assert await _in_flight(stores, child) == 0

    streaming = stream_of(b"data: 1\n\n")
    outcome = await guards(child, Next(streaming))  # a stream holds its slot until it ends
    with pytest.raises(FanOutConcurrentExceededError):
        await guards(child, Next())
    assert hasattr(outcome, "events")
    _ = [event async for event in outcome.events]  # type: ignore[union-attr]
    assert await _in_flight(stores, child) == 0


async def test_depth_is_refused_before_anything_is_counted_and_reads_are_not_counted() -> None:
    stores = MemoryBackend().stores()
    deep = _delegated()
    deep.chain = ("o", "p", "a")
    with pytest.raises(HopLimitExceededError):
        await _guards(stores, max_depth=2)(deep, Next())
    reading = ctx(operation=GET_TASK)
    call_next = Next()
    await _guards(stores, max_depth=1)(reading, call_next)
    assert call_next.called


# --- HopBudget -----------------------------------------------------------------------------------


def _budget(stores: Stores, budgets: BudgetSettings) -> HopBudget:
    scopes = ConfiguredScopes(budgets, stores.budget_limits)
    return HopBudget(stores, budgets, scopes, AgentRoles(None))


TWO_CALLS = BudgetSettings(
    agents={"a": (BudgetLimitSettings(metric="calls", window="day", limit=2),)}
)


async def _used(stores: Stores) -> tuple[int, int]:
    scopes = ConfiguredScopes(TWO_CALLS, stores.budget_limits).for_call("a", (), None, "b")
    status = await stores.budgets.status(scopes)
    return status[0].used, status[0].reserved


async def test_a_send_reserves_one_call_and_settles_it_once_answered() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores, TWO_CALLS)
    await stage(ctx(), Next())
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)


async def test_the_answer_does_not_wait_for_its_settle() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores, TWO_CALLS)
    await stage(ctx(), Next())
    assert await _used(stores) == (0, 1)  # answered, the settle still queued
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)


async def test_a_rate_refusal_gives_back_what_the_reserve_took() -> None:
    stores = MemoryBackend().stores()
    budgets = BudgetSettings(
        agents=TWO_CALLS.agents, agent_rates={"a": RateSettings(rate_per_s=0.001, burst=1)}
    )
    stage = _budget(stores, budgets)
    await stage(ctx(), Next())
    await stage.settles.drained()
    call_next = Next()
    with pytest.raises(RateLimitedError):
        await stage(ctx(), call_next)
    assert not call_next.called
    assert await _used(stores) == (1, 0)


async def test_a_refusal_further_in_releases_the_reservation() -> None:
    stores = MemoryBackend().stores()
    with pytest.raises(PolicyDeniedError):
        await _budget(stores, TWO_CALLS)(ctx(), _refuse)
    assert await _used(stores) == (0, 0)


async def test_a_stream_holds_its_reservation_until_it_ends() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores, TWO_CALLS)
    outcome = await stage(ctx(), Next(stream_of(b"data: 1\n\n")))
    assert await _used(stores) == (0, 1)
    _ = [event async for event in outcome.events]  # type: ignore[union-attr]
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)


async def test_a_spent_budget_refuses_and_a_rate_limit_refuses_before_it() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores, TWO_CALLS)
    await stage(ctx(), Next())
    await stage(ctx(), Next())
    call_next = Next()
    with pytest.raises(BudgetExhaustedError):
        await stage(ctx(), call_next)
    assert not call_next.called
    rated = BudgetSettings(agent_rates={"a": RateSettings(rate_per_s=0.001, burst=1)})
    limited = _budget(MemoryBackend().stores(), rated)
    await limited(ctx(), Next())
    with pytest.raises(RateLimitedError):
        await limited(ctx(), Next())

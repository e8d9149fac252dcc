"""A unary send's budget settle goes out with the task route's claim (decision 0078): at c=1 a
hop makes two round trips, its reserve's (with the fan-out slot and the revocation check for a
hop that presents a token) and its claim's, which carries the settle (and the slot's release).
Counted at the batcher, one request after the other: what the count depends on is how the calls
are queued, not how fast anything is.
"""

from __future__ import annotations

import asyncio

import pytest
from stage_kit import ctx

from benchmarks.hop_cpu import batch_sizes
from broker.budgets.scopes import ConfiguredScopes
from broker.errors import UpstreamBadResponseError
from broker.policy.roles import AgentRoles
from broker.settings import BudgetLimitSettings, BudgetSettings
from broker.stages.budget import HopBudget
from broker.stores.base import Stores
from broker.stores.memory import MemoryBackend
from broker.types import MediationContext, Outcome, Reply

TWO_CALLS = BudgetSettings(
    agents={"a": (BudgetLimitSettings(metric="calls", window="day", limit=2),)}
)


async def test_the_first_hop_of_a_chain_settles_in_its_claims_round_trip(
    redis_url: str, redis_key_prefix: str
) -> None:
    shapes = await batch_sizes(redis_url, "origin", 20, prefix=redis_key_prefix)
    # The reserve; then the settle and the claim.
    assert shapes == [[1, 2]] * 20


async def test_a_token_presenting_hop_releases_and_settles_in_its_claims_round_trip(
    redis_url: str, redis_key_prefix: str
) -> None:
    shapes = await batch_sizes(redis_url, "token", 20, prefix=redis_key_prefix)
    # The slot (its token's revocation checked with it) and the reserve; then the slot's
    # release, the settle and the claim.
    assert shapes == [[2, 3]] * 20


# --- exactly once, however the call ends after its answer was checked -----------------------


def _budget(stores: Stores) -> HopBudget:
    return HopBudget(stores, TWO_CALLS, ConfiguredScopes(TWO_CALLS, stores.budget_limits),
                     AgentRoles(None))  # fmt: skip


async def _used(stores: Stores) -> tuple[int, int]:
    scopes = ConfiguredScopes(TWO_CALLS, stores.budget_limits).for_call("a", (), None, "b")
    status = await stores.budgets.status(scopes)
    return status[0].used, status[0].reserved


async def test_a_checked_answer_is_settled_once_when_answered() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores)

    async def agent(c: MediationContext) -> Outcome:
        assert c.on_answer_checked is not None
        c.on_answer_checked()
        c.on_answer_checked()  # told twice: still one settle
        return Reply(200, b"{}")

    await stage(ctx(), agent)
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)


async def test_a_claim_refused_after_the_check_leaves_the_call_settled_once() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores)

    async def agent(c: MediationContext) -> Outcome:
        assert c.on_answer_checked is not None
        c.on_answer_checked()
        raise UpstreamBadResponseError("a task that belongs to another caller")

    with pytest.raises(UpstreamBadResponseError):
        await stage(ctx(), agent)
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)  # spent, not given back, not charged twice


async def test_a_caller_that_hangs_up_during_the_claim_leaves_the_call_settled_once() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores)
    claiming = asyncio.Event()

    async def agent(c: MediationContext) -> Outcome:
        assert c.on_answer_checked is not None
        c.on_answer_checked()
        claiming.set()
        await asyncio.sleep(3600)  # the claim's round trip
        return Reply(200, b"{}")

    call = asyncio.ensure_future(stage(ctx(), agent))
    await claiming.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)


async def test_an_answer_never_checked_is_settled_after_it_as_before() -> None:
    stores = MemoryBackend().stores()
    stage = _budget(stores)

    async def agent(_: MediationContext) -> Outcome:  # an upstream error: passed through
        return Reply(200, b"{}")

    await stage(ctx(), agent)
    assert await _used(stores) == (0, 1)  # answered, the settle still queued
    await stage.settles.drained()
    assert await _used(stores) == (1, 0)

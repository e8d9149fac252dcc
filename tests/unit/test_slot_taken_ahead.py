"""The guards' fan-out slot taken while the stages after them run, up to the budget, so the
budget's reserve shares its round trip (decision 0075): the caller hears the same refusal, in the
same order, and nothing is left held or counted that was not before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from stage_kit import MINTER, VERIFIER, Next, ctx, stream_of

from broker.budgets.scopes import ConfiguredScopes
from broker.delegation.errors import DelegationTokenRevokedError
from broker.delegation.tokens import hop_scope
from broker.errors import (
    BudgetExhaustedError,
    FanOutTotalExceededError,
    RateLimitedError,
    TaskNotFoundError,
    TreeKilledError,
)
from broker.pipeline.stage import fold
from broker.policy.roles import AgentRoles
from broker.settings import (
    BudgetLimitSettings,
    BudgetSettings,
    DelegationSettings,
    GuardLimits,
    LimitSettings,
    RateSettings,
)
from broker.stages.budget import HopBudget
from broker.stages.delegation import DelegationContext
from broker.stages.guards import CascadeGuards
from broker.stores.base import DelegationUsage, Stores
from broker.stores.memory import MemoryBackend
from broker.types import MediationContext, Outcome

CallNext = Callable[[MediationContext], Awaitable[Outcome]]
Stage = Callable[[MediationContext, Callable[[MediationContext], Awaitable[Outcome]]],
                 Awaitable[Outcome]]  # fmt: skip
ONE_CALL_A_DAY = BudgetSettings(
    agents={"a": (BudgetLimitSettings(metric="calls", window="day", limit=1),)}
)


def _sends(c: MediationContext) -> bool:
    return c.operation is not None and c.operation.sends_message


class _Hop:
    """Delegation context, guards (slot taken ahead, one child per parent), ``between``, the
    budget, the agent: the A2A order without the stages that only compute."""

    def __init__(
        self,
        *between: Stage,
        budgets: BudgetSettings = ONE_CALL_A_DAY,
        upstream: Next | None = None,
    ) -> None:
        self.stores: Stores = MemoryBackend().stores()
        self.upstream = upstream or Next()
        guards = CascadeGuards(
            self.stores.delegation_counters,
            DelegationSettings(limits=GuardLimits(max_children_total=1)),
            LimitSettings(),
            revocations=self.stores.revocations,
            ahead=True,
        )
        scopes = ConfiguredScopes(budgets, self.stores.budget_limits)
        self.budget = HopBudget(self.stores, budgets, scopes, AgentRoles(None))
        self.token, self.claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
        delegation = DelegationContext(VERIFIER, self.stores.revocations, defer=_sends)

        async def agent(c: MediationContext, _: object) -> Outcome:
            return await self.upstream(c)

        self._chain = fold([delegation, guards, *between, self.budget, agent])

    async def send(self) -> Outcome:
        return await self._chain(ctx(headers={"a2a-delegation": self.token}))

    async def counted(self) -> DelegationUsage:
        return await self.stores.delegation_counters.usage(self.claims.jti, self.claims.tree)

    async def budget_used(self) -> tuple[int, int]:
        await self.budget.settles.drained()
        scopes = ConfiguredScopes(ONE_CALL_A_DAY, self.stores.budget_limits)
        status = await self.stores.budgets.status(scopes.for_call("a", (), None, "b"))
        return status[0].used, status[0].reserved


async def _mint(c: MediationContext, call_next: CallNext) -> Outcome:
    assert c.parent is not None and c.caller is not None
    c.hop_token, c.hop = MINTER.mint_next(c.parent, c.caller, "b", hop_scope("SendMessage"))
    return await call_next(c)


async def _not_yours(c: MediationContext, call_next: object) -> Outcome:
    raise TaskNotFoundError


async def test_a_hop_takes_its_slot_and_its_budget_and_gives_the_slot_back_once_answered() -> None:
    hop = _Hop()
    await hop.send()
    assert len(hop.upstream.seen) == 1 and hop.upstream.seen[0].parent == hop.claims
    assert await hop.counted() == DelegationUsage(0, 1, 1)
    assert await hop.budget_used() == (1, 0)


async def test_the_slot_s_refusal_comes_before_the_budget_s_and_takes_nothing() -> None:
    hop = _Hop(_mint, budgets=BudgetSettings())  # no budget: the slot alone
    await hop.send()
    call = ctx(headers={"a2a-delegation": hop.token})
    with pytest.raises(FanOutTotalExceededError):  # one child per parent
        await hop._chain(call)
    assert len(hop.upstream.seen) == 1
    # Recorded as a refusal before any token was minted, with its chain, as before.
    assert (call.hop, call.hop_token, call.chain) == (None, "", ("origin", "a"))
    # With a budget that is also used up, the slot's refusal is the one heard.
    hop = _Hop()
    await hop.send()
    with pytest.raises(FanOutTotalExceededError):
        await hop.send()
    assert len(hop.upstream.seen) == 1
    assert await hop.budget_used() == (1, 0)  # the refused hop's reserve (if any) given back


async def test_the_slot_s_refusal_comes_before_a_rate_limit_s() -> None:
    budgets = BudgetSettings(agent_rates={"a": RateSettings(rate_per_s=0.001, burst=1)})
    hop = _Hop(budgets=budgets)
    await hop.send()
    with pytest.raises(FanOutTotalExceededError):
        await hop.send()
    other, _ = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    with pytest.raises(RateLimitedError):  # the rate alone, under another parent
        await hop._chain(ctx(headers={"a2a-delegation": other}))


async def test_a_budget_refusal_counts_the_slot_as_before_and_frees_it() -> None:
    hop = _Hop()
    await hop.send()  # the caller's one call a day
    other, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    with pytest.raises(BudgetExhaustedError):
        await hop._chain(ctx(headers={"a2a-delegation": other}))
    usage = await hop.stores.delegation_counters.usage(claims.jti, claims.tree)
    assert usage == DelegationUsage(0, 1, 1)  # counted, as when the guards waited, not held


async def test_a_refusal_between_the_guards_and_the_budget_gives_way_to_the_slot_s() -> None:
    hop = _Hop(_not_yours, budgets=BudgetSettings())
    with pytest.raises(TaskNotFoundError):
        await hop.send()
    assert await hop.counted() == DelegationUsage(0, 1, 1)  # taken and given back
    with pytest.raises(FanOutTotalExceededError):
        await hop.send()


async def test_a_revoked_token_is_refused_first_and_counts_and_spends_nothing() -> None:
    hop = _Hop()
    await hop.stores.revocations.revoke_token(hop.claims.jti, time.time() + 60)
    call = ctx(headers={"a2a-delegation": hop.token})
    with pytest.raises(DelegationTokenRevokedError):
        await hop._chain(call)
    assert (call.parent, call.chain) == (None, ())
    assert not hop.upstream.called
    assert await hop.counted() == DelegationUsage(0, 0, 0)
    assert await hop.budget_used() == (0, 0)


async def test_a_stream_holds_its_slot_until_it_ends() -> None:
    hop = _Hop(upstream=Next(stream_of(b"data: 1\n\n")))
    outcome = await hop.send()
    assert await hop.counted() == DelegationUsage(1, 1, 1)
    _ = [event async for event in outcome.events]  # type: ignore[union-attr]
    assert await hop.counted() == DelegationUsage(0, 1, 1)


async def test_the_slot_is_free_once_the_agent_answered_before_the_answer_is_inspected() -> None:
    seen: list[int] = []
    hop = _Hop()

    async def agent(c: MediationContext) -> Outcome:
        seen.append((await hop.counted()).in_flight)
        assert c.on_answer is not None
        c.on_answer()  # as the forward stage does once the answer is read
        await asyncio.sleep(0)
        seen.append((await hop.counted()).in_flight)  # the claim goes out here
        return await Next()(c)

    hop.upstream = agent  # type: ignore[assignment]
    await hop.send()
    assert seen == [1, 0]
    assert await hop.counted() == DelegationUsage(0, 1, 1)  # released, totals kept


async def test_a_killed_tree_is_named_in_the_refusal_the_caller_hears() -> None:
    hop = _Hop(_mint)
    await hop.stores.revocations.kill_tree(hop.claims.tree, time.time() + 60)
    with pytest.raises(TreeKilledError) as refused:
        await hop.send()
    assert refused.value.metadata == {"tree": hop.claims.tree}
    assert await hop.budget_used() == (0, 0)

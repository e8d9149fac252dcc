"""Budget for an LLM call: reserve the worst case, then settle to the actual usage or release.

Reserve happens before anything is forwarded and fails closed (a store error refuses the call:
nothing is forwarded unmetered). A unary answer settles to the usage the provider reported (or
that was counted); a provider error releases. A stream settles when it ends; if it ends early
(failure, cancel, timeout) it still settles to what was counted once the provider had produced
anything (the provider charges for it), and releases when it had produced nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from broker.budgets import Scope
from broker.late_writes import finish_quietly
from broker.llm.config import LlmSettings
from broker.llm.context import LlmCallNext, LlmContext, close_events
from broker.llm.errors import LlmBudgetExhaustedError
from broker.llm.roles import AgentRoles
from broker.llm.usage import worst_case
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.types import Outcome, StreamReply

log = logging.getLogger("a2a_broker.llm")


class BudgetScopes(Protocol):
    async def for_llm_call(
        self, agent: str, teams: tuple[str, ...], tree: str | None, target: str
    ) -> tuple[Scope, ...]:
        """The scopes (with their limits) one call is charged to: the agent, each of its
        teams, the task tree when delegated, and the agent→``target`` edge if configured."""


class MeterBudget:
    def __init__(
        self, ledger: BudgetLedger, scopes: BudgetScopes, roles: AgentRoles, llm: LlmSettings
    ) -> None:
        self._ledger = ledger
        self._scopes = scopes
        self._roles = roles
        self._ttl_s = llm.reservation_ttl_s
        self._bytes_per_token = llm.bytes_per_token

    async def __call__(self, ctx: LlmContext, call_next: LlmCallNext) -> Outcome:
        assert ctx.caller and ctx.request and ctx.route  # noqa: S101 - earlier stages
        ctx.worst_case = worst_case(ctx.request, ctx.route, self._bytes_per_token)
        target = f"model:{ctx.request.model}"
        teams = self._roles.of(ctx.caller)
        scopes = await self._scopes.for_llm_call(ctx.caller, teams, ctx.tree, target)
        if not scopes:
            return await call_next(ctx)
        held = await self._ledger.reserve(scopes, ctx.worst_case, ttl_s=self._ttl_s)
        if isinstance(held, BudgetRefusal):
            raise budget_exhausted(held)
        try:
            outcome = await call_next(ctx)
        except BaseException:
            await finish_quietly(self._ledger.release(held), "budget release", log)
            raise
        if isinstance(outcome, StreamReply):
            events = self._settled(ctx, held, outcome.events)
            return StreamReply(events, outcome.status, outcome.headers)
        await self._finish(ctx, held)
        return outcome

    async def _settled(
        self, ctx: LlmContext, held: Reservation, events: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        finally:
            await close_events(events)
            if ctx.meter is not None and ctx.meter.started:
                ctx.usage = ctx.meter.usage()
            await self._finish(ctx, held)

    async def _finish(self, ctx: LlmContext, held: Reservation) -> None:
        if ctx.usage is None:
            await finish_quietly(self._ledger.release(held), "budget release", log)
        else:
            await finish_quietly(self._ledger.settle(held, ctx.usage), "budget settle", log)


def budget_exhausted(refusal: BudgetRefusal) -> LlmBudgetExhaustedError:
    window = "lifetime" if refusal.window == "lifetime" else f"per {refusal.window}"
    message = (
        f"Budget exhausted: {refusal.scope} {refusal.metric} {window} "
        f"(limit {refusal.limit}, used {refusal.used}, reserved {refusal.reserved})."
    )
    metadata = {"scope": refusal.scope, "metric": refusal.metric, "window": refusal.window}
    return LlmBudgetExhaustedError(message, metadata=metadata)

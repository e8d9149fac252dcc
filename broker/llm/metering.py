"""Budget for an LLM call: reserve the worst case, then settle to the actual usage or release.

Reserve happens before anything is forwarded and fails closed (a store error refuses the call:
nothing is forwarded unmetered). A unary answer settles to the usage the provider reported (or
that was counted); a provider error releases. A stream settles when it ends; if it ends early
(failure, cancel, timeout) it still settles to what was counted once the provider had produced
anything (the provider charges for it), and releases when it had produced nothing. The
reservation is held with ``broker.pipeline.stage.holding``, like every other.
"""

from __future__ import annotations

import logging
from typing import Protocol

from broker.background import BackgroundTasks
from broker.budgets.model import Scope
from broker.errors import BrokerError
from broker.llm.context import LlmCallNext, LlmContext
from broker.llm.errors import LlmBudgetExhaustedError
from broker.pipeline.stage import holding
from broker.policy.roles import AgentRoles
from broker.protocols.llm.usage import worst_case
from broker.settings_llm import LlmSettings
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.types import Outcome

log = logging.getLogger("a2a_broker.llm")


class BudgetScopes(Protocol):
    async def for_llm_call(
        self, agent: str, teams: tuple[str, ...], tree: str | None, target: str
    ) -> tuple[Scope, ...]:
        """The scopes (with their limits) one call is charged to: the agent, each of its
        teams, the task tree when delegated, and the agent→``target`` edge if configured."""


class MeterBudget:
    def __init__(
        self,
        ledger: BudgetLedger,
        scopes: BudgetScopes,
        roles: AgentRoles,
        llm: LlmSettings,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self._tasks = tasks
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
        metered = _Metered(self._ledger, held, ctx)
        return await holding(ctx, call_next, metered, "budget", tasks=self._tasks)


class _Metered:
    """An LLM call's worst-case reservation: settled to what the call used once it is known
    (a unary answer's usage, or what a stream's meter counted), released if it used nothing."""

    def __init__(self, ledger: BudgetLedger, held: Reservation, ctx: LlmContext) -> None:
        self._ledger = ledger
        self._held = held
        self._ctx = ctx

    async def give_back(self) -> None:
        await self._ledger.release(self._held)

    async def settle(self) -> None:
        ctx = self._ctx
        if ctx.usage is None and ctx.meter is not None and ctx.meter.started:
            ctx.usage = ctx.meter.usage()
        try:
            if ctx.usage is None:
                await self._ledger.release(self._held)
            else:
                await self._ledger.settle(self._held, ctx.usage)
        except BrokerError as err:
            log.warning("budget settle failed for now (retried until it lands): %s", err.reason)


def budget_exhausted(refusal: BudgetRefusal) -> LlmBudgetExhaustedError:
    window = "lifetime" if refusal.window == "lifetime" else f"per {refusal.window}"
    message = (
        f"Budget exhausted: {refusal.scope} {refusal.metric} {window} "
        f"(limit {refusal.limit}, used {refusal.used}, reserved {refusal.reserved})."
    )
    metadata = {"scope": refusal.scope, "metric": refusal.metric, "window": refusal.window}
    return LlmBudgetExhaustedError(message, metadata=metadata)

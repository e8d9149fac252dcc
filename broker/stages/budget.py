"""Rate limits and budgets for agent-to-agent sends: reserve before forwarding, settle after.

A send reserves one call in every budget it is charged to (ONE atomic store operation for all
of them: a limit is never passed however many requests race), and settles it when the answer or
stream ends; a refusal or failure before the request left releases it. Once the agent has
answered, a settle the store fails never replaces the answer with an error: the ledger retries
it in the background until it lands, so the call is charged once. Rate limits (GCRA) apply per
agent and per caller→target edge. An agent that has neither rate nor budget configured costs no
store round trip here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from broker.background import BackgroundTasks
from broker.budgets.model import Usage
from broker.budgets.scopes import ConfiguredScopes
from broker.errors import BrokerError, BudgetExhaustedError, RateLimitedError
from broker.pipeline.stage import holding
from broker.policy.roles import AgentRoles
from broker.settings import BudgetSettings, RateSettings
from broker.stores.base import Stores
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.types import CallContext, CallNext, MediationContext, Outcome

ONE_CALL = Usage(calls=1)
C = TypeVar("C", bound=CallContext)
log = logging.getLogger("a2a_broker.budget")


class HopBudget:
    def __init__(
        self,
        stores: Stores,
        budgets: BudgetSettings,
        scopes: ConfiguredScopes,
        roles: AgentRoles,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self._tasks = tasks
        self._ledger = stores.budgets
        self._limiter = stores.rate_limiter
        self._budgets = budgets
        self._scopes = scopes
        self._roles = roles

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.operation is not None and ctx.target is not None  # noqa: S101
        assert ctx.caller is not None  # noqa: S101
        if not ctx.operation.sends_message:
            return await call_next(ctx)
        tree = ctx.hop.tree if ctx.hop is not None else None
        return await self.charge(ctx, call_next, caller=ctx.caller, target=ctx.target.name,
                                 tree=tree)

    async def charge(
        self,
        ctx: C,
        call_next: Callable[[C], Awaitable[Outcome]],
        *,
        caller: str,
        target: str,
        tree: str | None,
        tool: str | None = None,
    ) -> Outcome:
        """One call charged for the rest of ``call_next`` (every protocol's hop: an A2A send,
        an MCP tool call): the caller's and the caller→target edge's rates, then one atomic
        reserve in every budget the call counts in (``tool``: an MCP tool's own budget too),
        settled when the answer ends, given back if the call is refused further in."""
        await self._rate(f"agent:{caller}", self._budgets.agent_rates.get(caller))
        await self._rate(
            f"edge:{caller}>{target}", self._budgets.edge_rates.get(f"{caller}>{target}")
        )
        await self._scopes.refresh()  # the live limits, at most about a second old
        scopes = self._scopes.for_call(caller, self._roles.of(caller), tree, target, tool=tool)
        if not scopes:
            return await call_next(ctx)
        held = await self._ledger.reserve(scopes, ONE_CALL, ttl_s=self._budgets.reservation_ttl_s)
        if isinstance(held, BudgetRefusal):
            raise BudgetExhaustedError(
                f"The {held.metric} budget of {held.scope} for this {held.window} is used up.",
                metadata={"scope": held.scope, "metric": held.metric, "window": held.window},
            )
        return await holding(
            ctx, call_next, _OneCall(self._ledger, held), "budget", tasks=self._tasks
        )

    async def _rate(self, key: str, rate: RateSettings | None) -> None:
        if rate is None:
            return
        wait = await self._limiter.acquire(key, rate_per_s=rate.rate_per_s, burst=rate.burst)
        if wait > 0:
            raise RateLimitedError(metadata={"limit": key}, retry_after=wait)


class _OneCall:
    """One call's reservation: settled to one call once answered, released otherwise."""

    def __init__(self, ledger: BudgetLedger, held: Reservation) -> None:
        self._ledger = ledger
        self._held = held

    async def give_back(self) -> None:
        await self._ledger.release(self._held)

    async def settle(self) -> None:
        try:
            await self._ledger.settle(self._held, ONE_CALL)
        except BrokerError as err:
            log.warning("budget settle failed for now (retried until it lands): %s", err.reason)

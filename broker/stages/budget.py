"""Rate limits and budgets for agent-to-agent sends: reserve before forwarding, settle after.

A send reserves one call in every budget it is charged to (ONE atomic store operation for all
of them: a limit is never passed however many requests race), and settles it when the answer or
stream ends; a refusal or failure before the request left releases it. Once the agent has
answered, a settle the store fails never replaces the answer with an error: the ledger retries
it in the background until it lands, so the call is charged once. Rate limits (GCRA) apply per
agent and per caller→target edge. An agent that has neither rate nor budget configured costs no
store round trip here.

Round trips (decision 0065): the rate checks and the reserve are started in the same event-loop
turn, so the Redis store sends their scripts as one pipeline: one round trip on the request's
way in however many of them apply. A unary answer's settle is queued and sent after the answer
(``SettleQueue``): the settles of the answers of one turn share one pipeline, and none of them
delays its answer. A unary answer that passed its check is settled at once instead, its script
queued in the same turn as the task route's claim, so both go out in one round trip (decision
0078): the call counts as spent from then on, also if the claim is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from broker.background import BackgroundTasks
from broker.budgets.model import ONE_CALL, Usage
from broker.budgets.scopes import ConfiguredScopes
from broker.errors import BrokerError, BudgetExhaustedError, RateLimitedError
from broker.late_writes import finish_quietly, finish_soon
from broker.pipeline.stage import holding
from broker.policy.roles import AgentRoles
from broker.settings import BudgetSettings, RateSettings
from broker.stores.base import Stores
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.types import CallContext, CallNext, MediationContext, Outcome

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
        self.settles = SettleQueue(tasks)
        # No rate is configured (the settings are fixed): no rate check to start per call.
        self._rated = bool(budgets.agent_rates or budgets.edge_rates)

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
        rates = self._start_rates(caller, target) if self._rated else ()
        try:
            held = await self._reserve(caller, target, tree, tool)
        except BaseException:
            if rates:
                await _ended(rates)
            raise
        try:
            if rates:  # a rate limit refuses first, as when the checks ran one after the other
                _check_rates(rates, await _ended(rates))
            # Checks that shared this round trip (the guards' fan-out slot) must have passed
            # before anything leaves; their refusal comes first (the guards see to that).
            if ctx.pending_checks is not None:
                await ctx.pending_checks()
        except BaseException:
            if isinstance(held, Reservation):  # the hop is refused: the reserve gives back
                await finish_quietly(self._ledger.release(held), "budget release", log, self._tasks)
            raise
        if held is None:
            return await call_next(ctx)
        if isinstance(held, BudgetRefusal):
            raise BudgetExhaustedError(
                f"The {held.metric} budget of {held.scope} for this {held.window} is used up.",
                metadata={"scope": held.scope, "metric": held.metric, "window": held.window},
            )
        one = _OneCall(self._ledger, held, self.settles)
        ctx.on_answer_checked = one.answered  # a unary answer's settle goes with its claim
        return await holding(ctx, call_next, one, "budget", tasks=self._tasks)

    def _start_rates(self, caller: str, target: str) -> list[tuple[str, asyncio.Future[float]]]:
        """The caller's and the edge's rate checks, started as tasks: their scripts are then
        queued in the same event-loop turn as the reserve's, and go to Redis in its round
        trip."""
        return [
            (key, asyncio.ensure_future(self._acquire(key, rate)))
            for key, rate in (
                (f"agent:{caller}", self._budgets.agent_rates.get(caller)),
                (f"edge:{caller}>{target}", self._budgets.edge_rates.get(f"{caller}>{target}")),
            )
            if rate is not None
        ]

    async def _acquire(self, key: str, rate: RateSettings) -> float:
        return await self._limiter.acquire(key, rate_per_s=rate.rate_per_s, burst=rate.burst)

    async def _reserve(
        self, caller: str, target: str, tree: str | None, tool: str | None
    ) -> Reservation | BudgetRefusal | None:
        """One atomic reserve of one call in every budget the hop is charged to (None: none)."""
        await self._scopes.refresh()  # the live limits, at most about a second old
        scopes = self._scopes.for_call(caller, self._roles.of(caller), tree, target, tool=tool)
        if not scopes:
            return None
        return await self._ledger.reserve(scopes, ONE_CALL, ttl_s=self._budgets.reservation_ttl_s)


async def _ended(rates: Sequence[tuple[str, asyncio.Future[float]]]) -> list[BaseException | None]:
    """Wait for every rate check to end; the failure of each (None if it answered)."""
    if not rates:
        return []
    await asyncio.wait([task for _, task in rates])
    return [task.exception() for _, task in rates]


def _check_rates(
    rates: Sequence[tuple[str, asyncio.Future[float]]], failures: list[BaseException | None]
) -> None:
    for failure in failures:
        if failure is not None:
            raise failure
    for key, task in rates:
        if (wait := task.result()) > 0:
            raise RateLimitedError(metadata={"limit": key}, retry_after=wait)


class SettleQueue:
    """Settles sent after the answers they settle, those of one event-loop turn together.

    ``add`` returns at once; once the running turn is over, every settle queued in it starts
    in one background task (in the runtime's ``tasks``), so their scripts share one pipeline.
    A settle never fails its caller: the ledger retries a failed one until it lands.
    """

    def __init__(self, tasks: BackgroundTasks | None) -> None:
        self._tasks = tasks
        self._queued: list[Callable[[], Awaitable[None]]] = []
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, settle: Callable[[], Awaitable[None]]) -> None:
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._start)
        self._queued.append(settle)
        self._unfinished += 1
        self._idle.clear()

    def now(self, ledger: BudgetLedger, held: Reservation, actual: Usage) -> None:
        """Settle ``held`` at once (``settle_soon``): its script is queued in the running turn,
        so it goes out in the round trip of what the caller queues next in it (the task route's
        claim). Its end is awaited by ``drained``; a failure is logged (a store's is retried by
        the ledger until it lands)."""
        self._unfinished += 1
        self._idle.clear()
        ledger.settle_soon(held, actual, self._ended)

    def _ended(self, failure: BaseException | None) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()
        if isinstance(failure, BrokerError):
            log.warning("budget settle failed for now (retried until it lands): %s", failure.reason)
        elif failure is not None and not isinstance(failure, asyncio.CancelledError):
            log.error("budget settle failed", exc_info=failure)

    async def drained(self) -> None:
        """Return once every settle queued so far has ended (tests; an orderly stop)."""
        await self._idle.wait()

    def _start(self) -> None:
        queued, self._queued = self._queued, []
        finish_soon(self._run(queued), "budget settle", log, self._tasks)

    async def _run(self, settles: list[Callable[[], Awaitable[None]]]) -> None:
        try:
            if len(settles) == 1:
                await settles[0]()
            else:
                await asyncio.gather(*(settle() for settle in settles))
        finally:
            self._unfinished -= len(settles)
            if self._unfinished == 0:
                self._idle.set()


class _OneCall:
    """One call's reservation: settled to one call once answered, released otherwise."""

    def __init__(self, ledger: BudgetLedger, held: Reservation, settles: SettleQueue) -> None:
        self._ledger = ledger
        self._held = held
        self._settles = settles
        self._ended = False  # settled or given back: exactly one of them, once

    def answered(self) -> None:
        """The agent's unary answer passed its check: the call is spent, settle it now (its
        script queued ahead of the task route's claim, in its round trip, decision 0078). The
        call stays settled whatever comes after (a claim refused, a caller that hangs up)."""
        if not self._ended:
            self._ended = True
            self._settles.now(self._ledger, self._held, ONE_CALL)

    async def give_back(self) -> None:
        if not self._ended:
            self._ended = True
            await self._ledger.release(self._held)

    async def settle(self) -> None:
        if not self._ended:
            self._ended = True
            self._settles.add(self._settle)

    async def _settle(self) -> None:
        try:
            await self._ledger.settle(self._held, ONE_CALL)
        except BrokerError as err:
            log.warning("budget settle failed for now (retried until it lands): %s", err.reason)

"""The containment stages: a breaker and a bulkhead per agent (A2A), a breaker per provider (LLM).

What counts as a failure of the upstream: it could not be reached or connected to in time, it
did not answer in time, it answered something that is not A2A, or it answered HTTP 5xx (for a
stream: before its first event; a stream that started is a success). Refusals by the broker's
own later stages (budget, audit, ...) and callers hanging up say nothing about the upstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.background import BackgroundTasks
from broker.containment.breaker import Breakers, CircuitBreaker, CircuitOpenError
from broker.containment.bulkhead import AtCapacityError, Bulkhead
from broker.errors import (
    LlmProviderCircuitOpenError,
    UpstreamBadResponseError,
    UpstreamBulkheadFullError,
    UpstreamCircuitOpenError,
    UpstreamConnectTimeoutError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from broker.llm.context import LlmCallNext, LlmContext
from broker.llm.errors import LlmProviderError, LlmProviderTimeoutError
from broker.pipeline.stage import holding
from broker.settings_containment import ContainmentSettings
from broker.types import CallNext, MediationContext, Outcome

_AGENT_FAILURES = (
    UpstreamUnreachableError,
    UpstreamConnectTimeoutError,
    UpstreamTimeoutError,
    UpstreamBadResponseError,
)
_PROVIDER_FAILURES = (LlmProviderError, LlmProviderTimeoutError)


def _verdict(exc: BaseException, failures: tuple[type[BaseException], ...]) -> bool | None:
    return False if isinstance(exc, failures) else None


def _status_verdict(status: int | None) -> bool | None:
    return None if status is None else status < 500


class AgentContainment:
    """Refuse a call to an agent whose circuit is open, or that has as many calls in flight
    through this process as it may; otherwise count the call's outcome."""

    def __init__(
        self,
        settings: ContainmentSettings,
        clock: Callable[[], float] = time.monotonic,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self._tasks = tasks
        self.breakers = Breakers(settings.breaker, clock)
        self.bulkhead = Bulkhead(settings)
        self._breaking = settings.breaker.enabled

    @property
    def passes_through(self) -> bool:
        """No breaker and no agent capped: nothing is refused, counted or recorded, so
        ``fold`` leaves the stage out (decisions 0087, 0093)."""
        return not self._breaking and not self.bulkhead.caps_any

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.target is not None  # noqa: S101 - resolved earlier
        agent = ctx.target.name
        breaker = self.breakers[agent] if self._breaking else None
        ticket = _admit(breaker, agent)
        try:
            capped = self.bulkhead.enter(agent)
        except AtCapacityError as full:
            _record(breaker, None, ticket)
            raise UpstreamBulkheadFullError(
                metadata={"agent": agent, "limit": str(full.limit)}
            ) from None
        try:
            if capped:
                # A stream whose response never started is never iterated, so it never ends:
                # its place is left when it is dropped instead (the bulkhead has no expiry).
                place = _Place(self.bulkhead, agent)
                outcome = await holding(
                    ctx, call_next, place, "bulkhead", dropped=place.leave, tasks=self._tasks
                )
            else:
                outcome = await call_next(ctx)
        except BaseException as exc:
            _record(breaker, _verdict(exc, _AGENT_FAILURES), ticket)
            raise
        _record(breaker, _status_verdict(ctx.upstream_status), ticket)
        return outcome


class _Place:
    """A call's place in its agent's bulkhead, left once however the call ends."""

    def __init__(self, bulkhead: Bulkhead, agent: str) -> None:
        self._bulkhead = bulkhead
        self._agent: str | None = agent

    def leave(self) -> None:
        if self._agent is not None:
            self._bulkhead.leave(self._agent)
            self._agent = None

    async def give_back(self) -> None:
        self.leave()

    async def settle(self) -> None:
        self.leave()


def _admit(breaker: CircuitBreaker | None, agent: str) -> int:
    if breaker is None:
        return 0
    try:
        return breaker.admit()
    except CircuitOpenError as refused:
        raise UpstreamCircuitOpenError(
            metadata={"agent": agent}, retry_after=refused.retry_after_s
        ) from None


def _record(breaker: CircuitBreaker | None, success: bool | None, ticket: int) -> None:
    if breaker is not None:
        breaker.record(success, ticket=ticket)


class ProviderBreaker:
    """The LLM endpoint's breaker per provider: a provider that keeps failing or timing out is
    refused at once (LLM_PROVIDER_CIRCUIT_OPEN) before any budget is reserved. Its rate
    limiting (HTTP 429) is not a failure: it says when to come back itself."""

    def __init__(
        self, settings: ContainmentSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.breakers = Breakers(settings.breaker, clock)
        self._enabled = settings.breaker.enabled

    @property
    def passes_through(self) -> bool:
        """A disabled breaker checks and records nothing: ``fold`` leaves the stage out."""
        return not self._enabled

    async def __call__(self, ctx: LlmContext, call_next: LlmCallNext) -> Outcome:
        if not self._enabled:
            return await call_next(ctx)
        assert ctx.route is not None  # noqa: S101 - parsed earlier
        provider = ctx.route.provider_name
        breaker = self.breakers[provider]
        try:
            ticket = breaker.admit()
        except CircuitOpenError as refused:
            raise LlmProviderCircuitOpenError(
                metadata={"provider": provider}, retry_after=refused.retry_after_s
            ) from None
        try:
            outcome = await call_next(ctx)
        except BaseException as exc:
            breaker.record(_verdict(exc, _PROVIDER_FAILURES), ticket=ticket)
            raise
        breaker.record(_status_verdict(ctx.upstream_status), ticket=ticket)
        return outcome

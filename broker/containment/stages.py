"""The containment stages: a breaker and a bulkhead per agent (A2A), a breaker per provider (LLM).

What counts as a failure of the upstream: it could not be reached or connected to in time, it
did not answer in time, it answered something that is not A2A, or it answered HTTP 5xx (for a
stream: before its first event; a stream that started is a success). Refusals by the broker's
own later stages (budget, audit, ...) and callers hanging up say nothing about the upstream.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable

from broker.containment.breaker import Breakers, CircuitBreaker, CircuitOpenError
from broker.containment.bulkhead import AtCapacityError, Bulkhead
from broker.containment.config import ContainmentSettings
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
from broker.types import CallNext, MediationContext, Outcome, StreamReply

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
        self, settings: ContainmentSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.breakers = Breakers(settings.breaker, clock)
        self.bulkhead = Bulkhead(settings)
        self._breaking = settings.breaker.enabled

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
            outcome = await call_next(ctx)
        except BaseException as exc:
            _record(breaker, _verdict(exc, _AGENT_FAILURES), ticket)
            if capped:
                self.bulkhead.leave(agent)
            raise
        _record(breaker, _status_verdict(ctx.upstream_status), ticket)
        if not capped:
            return outcome
        if isinstance(outcome, StreamReply):
            events = _held_until_end(_Place(self.bulkhead, agent), outcome.events)
            return StreamReply(events, outcome.status, outcome.headers)
        self.bulkhead.leave(agent)
        return outcome


class _Place:
    """A stream's place in its agent's bulkhead, left once however the stream ends."""

    def __init__(self, bulkhead: Bulkhead, agent: str) -> None:
        self._bulkhead = bulkhead
        self._agent: str | None = agent

    def leave(self) -> None:
        if self._agent is not None:
            self._bulkhead.leave(self._agent)
            self._agent = None


def _held_until_end(place: _Place, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    held = _relayed(place, events)
    # A stream whose response never started is never iterated, so its ``finally`` never runs:
    # the place is left when the stream is dropped instead (the bulkhead has no expiry).
    weakref.finalize(held, place.leave)
    return held


async def _relayed(place: _Place, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event
    finally:
        place.leave()


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

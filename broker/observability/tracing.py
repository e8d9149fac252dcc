"""Traces across hops: W3C trace context on every mediated call, spans when asked for.

Every call has a trace id, whether spans are recorded or not: the caller's (its ``traceparent``
header) or a new one. The broker passes the trace on to the agent or provider with a
``traceparent`` naming its own span as the parent, so when an agent calls on through the broker
with the same context (the agent kit does it) the whole delegation tree is one trace. The trace
id goes into the call's audit records (``detail.trace_id``) and its log line.

With ``[tracing] enabled = true`` each call is also an OpenTelemetry span (kind SERVER) with an
event per pipeline stage it reached, ended when its answer (or stream) ends; the span is the
one whose id travels in ``traceparent``. Off (the default), no span object exists: a call pays
for parsing one header or drawing two random numbers, and nothing else (docs/observability.md).

This module imports the OpenTelemetry API only when spans are turned on.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from broker.types import CallContext, Outcome

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_random = random.Random()  # not for secrets: ids only need to be unlikely to collide  # noqa: S311

# The tracer when spans are recorded (``enable``), else None: the hot path tests only this.
_tracer: Any = None
_SpanKind: Any = None
_Status: Any = None
_StatusCode: Any = None
_propagator: Any = None

C = TypeVar("C", bound="CallContext")


def enable(tracer: Any) -> None:
    """Record a span per mediated call with ``tracer`` (an OpenTelemetry ``Tracer``)."""
    global _tracer, _SpanKind, _Status, _StatusCode, _propagator  # noqa: PLW0603 - per process
    from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415 - only when on
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    _tracer, _SpanKind, _Status, _StatusCode = tracer, SpanKind, Status, StatusCode
    _propagator = TraceContextTextMapPropagator()


def disable() -> None:
    global _tracer  # noqa: PLW0603
    _tracer = None


def recording() -> bool:
    return _tracer is not None


def begin(ctx: CallContext, name: str) -> None:
    """The call's trace: the caller's ``traceparent`` continued, or a new trace; with spans
    on, the call's span started (its id is the one passed on)."""
    if _tracer is not None:
        _start_span(ctx, name)
        return
    parent = _parse(ctx.headers.get(TRACEPARENT, ""))
    if parent is not None:
        ctx.trace_id, ctx.trace_flags = parent[0], parent[2]
    else:
        ctx.trace_id, ctx.trace_flags = f"{_random.getrandbits(128):032x}", "01"
    ctx.span_id = f"{_random.getrandbits(64):016x}"


def _parse(header: str) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid version-00-compatible header, else None."""
    found = _TRACEPARENT.match(header.strip().lower()) if header else None
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


def _start_span(ctx: CallContext, name: str) -> None:
    carrier = {k: v for k in (TRACEPARENT, TRACESTATE) if (v := ctx.headers.get(k))}
    parent = _propagator.extract(carrier)
    span = _tracer.start_span(name, context=parent, kind=_SpanKind.SERVER)
    span.set_attribute("a2a_broker.request_id", ctx.request_id)
    context = span.get_span_context()
    ctx.span = span
    ctx.trace_id = f"{context.trace_id:032x}"
    ctx.span_id = f"{context.span_id:016x}"
    ctx.trace_flags = f"{int(context.trace_flags):02x}"


def outbound(ctx: CallContext) -> dict[str, str]:
    """The headers that pass the trace on to the agent or provider: the broker's span is the
    parent of whatever the upstream does; the caller's ``tracestate`` travels unchanged."""
    if not ctx.trace_id:
        return {}
    headers = {TRACEPARENT: f"00-{ctx.trace_id}-{ctx.span_id}-{ctx.trace_flags}"}
    if state := ctx.headers.get(TRACESTATE):
        headers[TRACESTATE] = state
    return headers


def end(ctx: CallContext, attributes: dict[str, str | int], outcome: str, name: str) -> None:
    """End the call's span (with spans on): what it was, and how it ended."""
    span = ctx.span
    if span is None:
        return
    ctx.span = None
    span.update_name(name)
    span.set_attributes(attributes)
    if outcome not in ("ok", "agent_error"):
        reason = ctx.error.reason if ctx.error is not None else outcome
        span.set_status(_Status(_StatusCode.ERROR, reason))
    span.end()


def event(ctx: CallContext, name: str) -> None:
    """A stage event on the call's span (nothing when spans are off)."""
    if ctx.span is not None:
        ctx.span.add_event(name)


def traced(
    stages: Sequence[Callable[[C, Callable[[C], Awaitable[Outcome]]], Awaitable[Outcome]]],
) -> list[Callable[[C, Callable[[C], Awaitable[Outcome]]], Awaitable[Outcome]]]:
    """``stages`` with an event each on the call's span as it is entered (``stage.<Name>``), when
    spans are on; unchanged when off, so the off pipeline is the same objects as before."""
    if _tracer is None:
        return list(stages)
    return [_Traced(stage) for stage in stages]


class _Traced:
    def __init__(self, stage: Callable[[Any, Any], Awaitable[Outcome]]) -> None:
        self._stage = stage
        self._event = f"stage.{type(stage).__name__}"

    async def __call__(self, ctx: Any, call_next: Any) -> Outcome:
        if ctx.span is not None:
            ctx.span.add_event(self._event)
        return await self._stage(ctx, call_next)

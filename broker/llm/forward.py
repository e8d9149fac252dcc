"""Forward an LLM call to its provider with the broker's key, and relay the answer.

The agent's headers do not travel: the provider gets the broker-held key, a content type and
an accept header. Unary answers are relayed as the provider sent them; streams event by event.
Transport failures are named as the provider's (502/504) by the one error table,
``broker.outbound.errors``; the provider's own HTTP answers (429, 401, 5xx) are read here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from broker.errors import BrokerError
from broker.llm.context import LlmCallNext, LlmContext
from broker.llm.errors import LlmProviderError, LlmProviderRateLimitedError, LlmProviderTimeoutError
from broker.observability import tracing
from broker.outbound.errors import provider_error
from broker.outbound.transport import Transport, TransportResponse
from broker.pipeline.stage import close_events
from broker.protocols.llm.usage import StreamMeter, unary_usage
from broker.protocols.llm.wire import openai_error_event
from broker.protocols.sse import relay
from broker.settings import LimitSettings
from broker.settings_llm import LlmSettings
from broker.types import Outcome, Reply, StreamReply

PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings"}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Provider answers the agent can act on (its own request was wrong): relayed as they are.
_RELAYED_CLIENT_ERRORS = frozenset({400, 404, 409, 413, 422})


class ForwardToProvider:
    """The innermost stage: it never calls ``call_next``."""

    def __init__(self, client: Transport, limits: LimitSettings, llm: LlmSettings) -> None:
        self._client = client
        self._limits = limits
        self._bytes_per_token = llm.bytes_per_token
        # The headers every call to a provider sends, by (stream, the provider's key).
        self._fixed: dict[tuple[bool, str], dict[str, str]] = {}

    async def __call__(self, ctx: LlmContext, call_next: LlmCallNext) -> Outcome:
        assert ctx.request and ctx.route and ctx.worst_case  # noqa: S101 - earlier stages
        request, route = ctx.request, ctx.route
        try:
            async with asyncio.timeout(route.provider.timeout_s):
                response = await self._client.send(
                    "POST",
                    route.url(PATHS[ctx.kind]),
                    headers=self._headers(ctx),
                    body=request.body,
                    stream=request.stream,
                )
                ctx.upstream_status = response.status
                if request.stream and response.status == 200:
                    return self._stream(ctx, response)
                try:
                    body = await response.read(self._limits.max_response_bytes)
                finally:
                    response.close()
        except TimeoutError:
            raise LlmProviderTimeoutError(detail=f"over {route.provider.timeout_s}s") from None
        except BrokerError as err:
            raise provider_error(err) from None
        return self._answer(ctx, response, body)

    def _headers(self, ctx: LlmContext) -> dict[str, str]:
        assert ctx.request and ctx.route  # noqa: S101
        stream, key = ctx.request.stream, ctx.route.provider.key
        fixed = self._fixed.get((stream, key))
        if fixed is None:  # a few per provider: built once
            fixed = {"Content-Type": "application/json"}
            fixed["Accept"] = "text/event-stream" if stream else "application/json"
            if key:
                fixed["Authorization"] = f"Bearer {key}"
            self._fixed[(stream, key)] = fixed
        headers = fixed.copy()
        headers.update(tracing.outbound(ctx))  # the provider's work joins the caller's trace
        return headers

    def _answer(self, ctx: LlmContext, response: TransportResponse, body: bytes) -> Reply:
        assert ctx.route and ctx.worst_case  # noqa: S101
        status = response.status
        media_type = response.content_type
        if status == 200:
            ctx.usage = unary_usage(body, ctx.worst_case, ctx.route, self._bytes_per_token)
            return Reply(200, body, media_type=media_type)
        if status in _RELAYED_CLIENT_ERRORS:
            return Reply(status, body, media_type=media_type)
        raise _refusal(status, response.headers.get("retry-after"))

    def _stream(self, ctx: LlmContext, response: TransportResponse) -> StreamReply:
        assert ctx.request and ctx.route and ctx.worst_case  # noqa: S101
        meter = StreamMeter(ctx.worst_case, ctx.route, self._bytes_per_token)
        ctx.meter = meter
        events = relay(
            response.chunks(),
            max_event_bytes=self._limits.max_response_bytes,
            heartbeat_s=self._limits.sse_heartbeat_s,
            max_duration_s=self._limits.sse_max_duration_s,
            on_event=_as_is,
            error_event=lambda err: openai_error_event(provider_error(err)),
            close_upstream=response.close,
        )
        relayed = _metered(events, meter, keep_usage_chunk=ctx.request.wants_usage)
        return StreamReply(relayed, 200, _SSE_HEADERS)


async def _as_is(event: bytes) -> bytes:
    return event


async def _metered(
    events: AsyncIterator[bytes], meter: StreamMeter, *, keep_usage_chunk: bool
) -> AsyncIterator[bytes]:
    """Each event goes past the meter; the usage-only chunk the broker asked for is dropped
    unless the caller asked for it too (clients may index ``choices[0]`` on every chunk)."""
    try:
        async for event in events:
            if meter.observe(event) or keep_usage_chunk:
                yield event
    finally:
        await close_events(events)


def _refusal(status: int, retry_after: str | None) -> BrokerError:
    if status == 429:
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        return LlmProviderRateLimitedError(retry_after=seconds, detail="provider HTTP 429")
    if status in (401, 403):
        return LlmProviderError(
            "The model provider refused the broker's credentials; tell the broker's operator.",
            detail=f"provider HTTP {status}",
        )
    return LlmProviderError(detail=f"provider HTTP {status}")

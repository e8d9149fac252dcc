"""Forward the caller's original bytes to the target agent and relay its answer.

The caller's credentials never travel on: the upstream gets only the A2A headers it needs and
the credential the broker holds for it. Unary answers are checked to be A2A-shaped (garbage
becomes UPSTREAM_BAD_RESPONSE) and otherwise relayed unchanged, upstream errors included;
streams are re-framed event by event (``broker.protocols.a2a.answers``). The few
answers the broker must look into: a new task (its route is recorded for its creator),
ListTasks (filtered to the caller's tasks) and the extended card (its interfaces rewritten to
the broker's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from broker.errors import BrokerError, StoreUnavailableError, UpstreamTimeoutError
from broker.observability import tracing
from broker.outbound.credentials import upstream_auth
from broker.outbound.transport import Transport, TransportResponse
from broker.protocols.a2a.answers import bad, reframe
from broker.protocols.a2a.wire import sse_error_event
from broker.protocols.sse import relay
from broker.settings import LimitSettings, UpstreamCredential
from broker.stages.responses import ResponseInspector
from broker.types import CallContext, CallNext, MediationContext, Outcome, Reply, StreamReply

StreamRecheck = Callable[[MediationContext], Awaitable[None]]
C = TypeVar("C", bound=CallContext)
_FORWARDED_HEADERS = ("content-type", "accept", "a2a-version", "a2a-extensions")
_RELAYED_HEADERS = ("a2a-extensions", "a2a-version")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
log = logging.getLogger("a2a_broker.forward")


class Forward:
    """The innermost stage: it never calls ``call_next``."""

    def __init__(
        self,
        upstream: Transport,
        limits: LimitSettings,
        upstream_credentials: Mapping[str, UpstreamCredential],
        inspector: ResponseInspector,
        recheck: StreamRecheck | None = None,
    ) -> None:
        self._upstream = upstream
        self._limits = limits
        self._creds = upstream_credentials
        self._inspect = inspector
        self._recheck = recheck

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.target is not None and ctx.operation is not None  # noqa: S101 - earlier stages
        # The hop's deadline (it only shrinks along a chain) bounds the whole exchange. The
        # transport bounds it too, by ``upstream_timeout_s`` (a stream's wait for its headers
        # by at most that): a deadline further away than that could never fire first, so it
        # costs no timer of its own.
        remaining = ctx.hop.dl - time.time() if ctx.hop is not None else None
        try:
            if remaining is not None and remaining <= self._limits.upstream_timeout_s:
                async with asyncio.timeout(remaining):
                    answer = await self._exchange(ctx, remaining)
            else:
                answer = await self._exchange(ctx, remaining)
        except TimeoutError:
            raise UpstreamTimeoutError(
                "The delegation's deadline passed before the agent answered."
            ) from None
        if isinstance(answer, StreamReply):
            return answer
        resp, body = answer
        if ctx.on_answer is not None:
            ctx.on_answer()
        body = await self._inspect.unary(ctx, resp.status, resp.content_type, body)
        return Reply(resp.status, body, resp.content_type, _relayed(resp.headers))

    async def _exchange(
        self, ctx: MediationContext, remaining: float | None
    ) -> StreamReply | tuple[TransportResponse, bytes]:
        """The agent's stream, or its unary answer read whole."""
        assert ctx.operation is not None  # noqa: S101
        sent = time.perf_counter()
        resp = await self._send(ctx)
        if ctx.operation.streaming and resp.is_event_stream:
            return self._stream(ctx, resp, remaining)
        try:
            body = await resp.read(self._limits.max_response_bytes)
        finally:
            resp.close()
            ctx.upstream_s = time.perf_counter() - sent
        return resp, body

    async def _send(self, ctx: MediationContext) -> TransportResponse:
        assert ctx.operation is not None  # noqa: S101
        resp = await self._upstream.send(
            ctx.http_method if ctx.binding == "rest" else "POST",
            self._url(ctx),
            headers=self._headers(ctx),
            body=ctx.body or None,
            stream=ctx.operation.streaming,
            reads_only=ctx.operation.reads_only,
        )
        ctx.upstream_status = resp.status
        return resp

    def _url(self, ctx: MediationContext) -> str:
        assert ctx.target is not None  # noqa: S101
        if ctx.binding == "jsonrpc":
            return ctx.target.jsonrpc_url
        url = ctx.target.rest_url.rstrip("/") + ctx.rest_tail
        return f"{url}?{ctx.query_string}" if ctx.query_string else url

    def _headers(self, ctx: MediationContext) -> dict[str, str]:
        assert ctx.target is not None  # noqa: S101
        headers = {k: v for k in _FORWARDED_HEADERS if (v := ctx.headers.get(k))}
        if ctx.body and "content-type" not in headers:
            headers["content-type"] = "application/json"
        headers.update(upstream_auth(self._creds.get(ctx.target.name), ctx.hop_token))
        headers.update(tracing.outbound(ctx))  # the agent's work joins the caller's trace
        return headers

    def _stream(
        self, ctx: MediationContext, resp: TransportResponse, remaining: float | None
    ) -> StreamReply:
        if resp.status != 200:
            resp.close()
            raise bad(resp.status, "a stream with an HTTP error status")
        claimed = ended = False

        async def on_event(event: bytes) -> bytes | None:
            """The agent's event checked, in the broker's framing (protocols.a2a.answers)."""
            nonlocal claimed, ended
            frame = reframe(ctx.binding, ctx.jsonrpc_id, event)
            if frame is None:
                return None
            sends = ctx.operation is not None and ctx.operation.sends_message
            if frame.task_id and sends and not claimed:
                await self._inspect.claim_task(ctx, frame.task_id, finished=frame.finished)
                claimed, ended = True, frame.finished
            elif frame.task_id and frame.finished and not ended:
                # The task ends in this stream (a send's, or a resubscription's): its route is
                # kept as a finished task's from now on, not for the running task's week.
                await self._inspect.task_finished(ctx, frame.task_id)
                ended = True
            return frame.data

        def error_event(err: BrokerError) -> bytes:
            ctx.error = err
            return sse_error_event(err, ctx.binding, ctx.jsonrpc_id)

        events = relay(
            resp.chunks(),
            max_event_bytes=self._limits.max_response_bytes,
            heartbeat_s=self._limits.sse_heartbeat_s,
            max_duration_s=min(self._limits.sse_max_duration_s, remaining or float("inf")),
            on_event=on_event,
            error_event=error_event,
            close_upstream=resp.close,
            recheck=_bound(self._recheck, ctx),
        )
        headers = {**_SSE_HEADERS, **_relayed(resp.headers)}
        return StreamReply(events, resp.status, headers)


def _bound(
    recheck: StreamRecheck | None, ctx: MediationContext
) -> Callable[[], Awaitable[None]] | None:
    return bound_recheck(recheck, ctx)


def bound_recheck(
    recheck: Callable[[C], Awaitable[None]] | None, ctx: C
) -> Callable[[], Awaitable[None]] | None:
    """``recheck`` of one open stream (every protocol's relay runs it about once a second): a
    store that cannot be read lets the stream go on, logged once."""
    if recheck is None:
        return None

    missed = 0

    async def run() -> None:
        nonlocal missed
        try:
            await recheck(ctx)
        except StoreUnavailableError as err:
            # The stream was allowed, and a stop (suspension, tree kill) is written to the very
            # store that cannot be read: no news. The answer keeps flowing; the next recheck
            # that reaches the store applies any stop (docs/decisions/0020).
            missed += 1
            level = logging.WARNING if missed == 1 else logging.DEBUG
            log.log(level, "stream %s goes on unchecked: %s", ctx.request_id, err.detail)

    return run


def _relayed(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k in _RELAYED_HEADERS if (v := headers.get(k))}

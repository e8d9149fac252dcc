"""The innermost MCP stage: send the request to the server through the broker's one outbound
transport and relay its answer.

The server gets the broker's credential for it and the hop token, never the caller's headers
(``broker.mcp.servers.upstream_headers``). An SSE answer is relayed event by event as it
arrives (``broker.protocols.sse.relay``, the relay A2A streams use, each event read by
``broker.mcp.events``): progress and log notifications reach the client
while the tool runs. ``initialize`` answers are read whole to learn the negotiated version,
which the sealed session id carries; list answers are filtered to what the caller's chain may
use, their cursors sealed. The virtual server's own answers are ``broker.mcp.virtual``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.errors import (
    BrokerError,
    StreamIdleTimeoutError,
    UpstreamResponseTooLargeError,
    UpstreamTimeoutError,
)
from broker.mcp.context import McpCallNext, McpContext
from broker.mcp.errors import (
    McpServerBadResponseError,
    McpServerTimeoutError,
    McpSessionNotFoundError,
)
from broker.mcp.events import OnMessage, relay_event, relay_json, relay_sse
from broker.mcp.listing import filter_result
from broker.mcp.reading import SESSION_HEADER, McpMessage
from broker.mcp.servers import McpServer, upstream_headers
from broker.mcp.sessions import CursorPosition, CursorSeal, SessionSeal, UpstreamSession
from broker.mcp.stages import McpJudge, MintMcpHopToken
from broker.mcp.wire import error_body, sse_frame
from broker.observability import tracing
from broker.outbound.transport import StreamTimeouts, Transport, TransportResponse
from broker.pipeline.stage import close_events
from broker.protocols.sse import relay
from broker.settings_mcp import McpSettings
from broker.stages.forward import bound_recheck
from broker.types import Outcome, Reply, StreamReply

if TYPE_CHECKING:
    from broker.mcp.virtual import VirtualServer

_DEFAULT_VERSION = "2025-11-25"


@dataclass(frozen=True, slots=True)
class McpForwardParts:
    transport: Transport
    sessions: SessionSeal
    cursors: CursorSeal
    judge: McpJudge
    mint: MintMcpHopToken
    settings: McpSettings
    max_stream_s: float
    heartbeat_s: float = 15.0
    recheck: Callable[[McpContext], Awaitable[None]] | None = None  # an open stream, ~1/s


class McpUpstream:
    """Sending to one MCP server and reading its answers (shared by one server's URL and the
    virtual server)."""

    def __init__(self, parts: McpForwardParts) -> None:
        self.parts = parts

    async def post(
        self, ctx: McpContext, server: McpServer, body: bytes, *, version: str,
        session: UpstreamSession | None, hop_token: str, name: str | None = None,
    ) -> TransportResponse:
        """POST ``body`` to ``server``; the answer once its headers arrived. A server slower
        than its ``timeout_s`` (or the work's deadline): ``McpServerTimeoutError``."""
        headers = upstream_headers(server, ctx.headers.items(), protocol_version=version
                                   or _DEFAULT_VERSION, session=session, hop_token=hop_token,
                                   name=name)
        left = _time_left(ctx, server)
        return await self._send(ctx, server, "POST", headers, body=body,
                                timeouts=StreamTimeouts(headers_s=left,
                                                        idle_s=server.idle_timeout_s))

    async def get(
        self, ctx: McpContext, server: McpServer, session: UpstreamSession | None
    ) -> TransportResponse:
        """Open ``server``'s own stream (``GET``) in ``session``, with the broker's credential
        and the hop token. A quiet stream is normal: only its maximum duration bounds it."""
        version = session.protocol_version if session is not None else ""
        headers = upstream_headers(server, ctx.headers.items(), protocol_version=version
                                   or _DEFAULT_VERSION, session=session, hop_token=ctx.hop_token)
        headers.pop("content-type", None)
        headers["accept"] = "text/event-stream"
        timeouts = StreamTimeouts(headers_s=_time_left(ctx, server),
                                  idle_s=self.parts.max_stream_s)
        return await self._send(ctx, server, "GET", headers, body=None, timeouts=timeouts)

    async def _send(
        self, ctx: McpContext, server: McpServer, method: str, headers: dict[str, str], *,
        body: bytes | None, timeouts: StreamTimeouts,
    ) -> TransportResponse:
        headers.update(tracing.outbound(ctx))  # the server's work joins the caller's trace
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeouts.headers_s):
                answer = await self.parts.transport.send(
                    method, server.url, headers=headers, body=body, stream=True,
                    timeouts=timeouts)
        except (TimeoutError, UpstreamTimeoutError):
            raise McpServerTimeoutError(metadata={"server": server.name}) from None
        finally:
            ctx.upstream_s += time.perf_counter() - started
        ctx.upstream_status = answer.status
        return answer

    async def relay(
        self, ctx: McpContext, server: McpServer, answer: TransportResponse, *,
        on_message: OnMessage | None, headers: dict[str, str] | None = None,
    ) -> Outcome:
        """The server's answer to the caller: nothing (202), one JSON message, or its SSE
        stream relayed event by event."""
        if answer.status == 202:
            answer.close()
            return Reply(202, b"", headers=headers or {})
        if answer.status == 404 and ctx.headers.get(SESSION_HEADER):
            answer.close()
            raise McpSessionNotFoundError()  # the server ended the session: start a new one
        if answer.is_event_stream:
            return StreamReply(self.events(ctx, server, answer, on_message), 200,
                               {**(headers or {}), "cache-control": "no-cache"})
        body = await self.read(ctx, server, answer)
        data = await relay_json(body, request_id=ctx.jsonrpc_id, on_message=on_message)
        return Reply(answer.status if answer.status < 300 else 200, data, headers=headers or {})

    def events(
        self, ctx: McpContext, server: McpServer, answer: TransportResponse,
        on_message: OnMessage | None, *, max_duration_s: float | None = None,
    ) -> AsyncIterator[bytes]:
        """The stream relayed by the broker's one relay (``broker.protocols.sse.relay``), as
        A2A streams are: event by event, heartbeats while the server is quiet, ended with an
        error event answering the request when the server is quiet past its
        ``idle_timeout_s``, the stream outlives its maximum duration, or an operator stops it
        (the kill switch, a suspended caller, a killed tree: rechecked about once a second).
        ``max_duration_s``: the stream's bound (default: the server's and the work's)."""
        request_id, parts = ctx.jsonrpc_id, self.parts

        async def on_event(raw: bytes) -> bytes | None:
            return await relay_event(raw, on_message)

        def error_event(err: BrokerError) -> bytes:
            ctx.error = mcp_error(err, server)
            return sse_frame(error_body(ctx.error, request_id))

        return relay(
            answer.chunks(),
            max_event_bytes=parts.settings.max_event_bytes,
            heartbeat_s=parts.heartbeat_s,
            max_duration_s=max_duration_s or min(parts.max_stream_s, _time_left(ctx, server)),
            on_event=on_event,
            error_event=error_event,
            close_upstream=answer.close,
            recheck=bound_recheck(parts.recheck, ctx),
        )

    async def read(self, ctx: McpContext, server: McpServer, answer: TransportResponse) -> bytes:
        try:
            async with asyncio.timeout(_time_left(ctx, server)):
                return await answer.read(self.parts.settings.max_event_bytes)
        except (TimeoutError, UpstreamTimeoutError):
            raise McpServerTimeoutError(metadata={"server": server.name}) from None
        except BrokerError as err:
            raise McpServerBadResponseError(detail=err.reason) from None
        finally:
            answer.close()

    async def one_answer(
        self, ctx: McpContext, server: McpServer, answer: TransportResponse
    ) -> dict[str, Any]:
        """The response to the caller's request in an answer (JSON or SSE), read whole: for
        answers the broker rewrites (initialize, the virtual server's lists)."""
        found: list[dict[str, Any]] = []
        wanted = ctx.jsonrpc_id

        async def keep(message: McpMessage, data: bytes) -> bytes | None:
            if message.kind == "response" and message.id == wanted and message.payload:
                found.append(message.payload)
            return data

        if answer.is_event_stream:
            frames = relay_sse(_closing(answer), request_id=wanted, on_message=keep,
                               idle_timeout_s=server.idle_timeout_s,
                               max_event_bytes=self.parts.settings.max_event_bytes,
                               max_duration_s=_time_left(ctx, server), raising=True)
            try:
                async for _ in frames:
                    if found:
                        break
            except BrokerError as err:
                raise mcp_error(err, server) from None
            finally:
                await close_events(frames)
        else:
            await relay_json(await self.read(ctx, server, answer), request_id=wanted,
                             on_message=keep)
        if not found or not isinstance(found[0].get("result"), dict):
            raise McpServerBadResponseError(metadata={"server": server.name})
        return found[0]

    def list_filter(self, ctx: McpContext, server: McpServer) -> OnMessage | None:
        """For a list request: its answer holds only what the chain may use, the next cursor
        sealed to this caller and list (decisions 0047, 0048)."""
        op = ctx.judged
        if op is None or op.kind != "list":
            return None
        caller, chain = ctx.caller or "", ctx.chain
        judge, cursors = self.parts.judge, self.parts.cursors

        async def on_message(answer: McpMessage, data: bytes) -> bytes | None:
            if answer.kind != "response" or answer.is_error or answer.id != ctx.jsonrpc_id:
                return data
            assert answer.payload is not None  # noqa: S101 - a response has one
            result = filter_result(
                op.method, answer.payload["result"],
                lambda item: judge.allows(chain, server.name, item),
                lambda c: cursors.issue(caller, server.name, op.method,
                                        CursorPosition(server.name, c)))
            return encode({**answer.payload, "result": result})

        return on_message


class ForwardMcp:
    """One server's URL: relay the request, or for ``initialize`` open a sealed session."""

    def __init__(self, upstream: McpUpstream, virtual: VirtualServer) -> None:
        self._upstream = upstream
        self._virtual = virtual

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        if ctx.virtual:
            return await self._virtual.answer(ctx)
        server, message = ctx.server, ctx.message
        assert server is not None and message is not None  # noqa: S101 - earlier stages
        if message.method == "initialize":
            return await self._initialize(ctx, server)
        body = ctx.body
        op = ctx.judged
        if op is not None and op.kind == "list" and op.cursor is not None:
            position = self._upstream.parts.cursors.open(ctx.caller or "", server.name,
                                                         op.method, op.cursor)
            body = with_params(message, {**(message.params or {}),
                                         "cursor": position.upstream_cursor})
        answer = await self._upstream.post(ctx, server, body, version=ctx.version,
                                           session=ctx.sessions.get(server.name),
                                           hop_token=ctx.hop_token)
        return await self._upstream.relay(ctx, server, answer,
                                          on_message=self._upstream.list_filter(ctx, server))

    async def _initialize(self, ctx: McpContext, server: McpServer) -> Outcome:
        answer = await self._upstream.post(ctx, server, ctx.body, version=ctx.version,
                                           session=None, hop_token=ctx.hop_token)
        session_id = answer.headers.get(SESSION_HEADER, "")
        result = await self._upstream.one_answer(ctx, server, answer)
        negotiated = str(result["result"].get("protocolVersion", ""))
        headers = {}
        if session_id:
            upstreams = {server.name: UpstreamSession(session_id, negotiated, server.epoch)}
            headers[SESSION_HEADER] = self._upstream.parts.sessions.issue(
                ctx.caller or "", server.name, upstreams)
        return Reply(200, encode(result), headers=headers)


def mcp_error(err: BrokerError, server: McpServer) -> BrokerError:
    """The transport's stream errors as the MCP server's: quiet too long, an event too big."""
    if isinstance(err, StreamIdleTimeoutError):
        return McpServerTimeoutError("The MCP server's stream sent nothing for too long.",
                                     metadata={"server": server.name})
    if isinstance(err, UpstreamResponseTooLargeError):
        return McpServerBadResponseError("An event in the MCP server's stream is too large.",
                                         metadata={"server": server.name})
    return err


def _time_left(ctx: McpContext, server: McpServer) -> float:
    """The server's own bound, never past the work's deadline (a delegated call's)."""
    if ctx.hop is None:
        return server.timeout_s
    return max(0.001, min(server.timeout_s, ctx.hop.dl - time.time()))


async def _closing(answer: TransportResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.chunks():
            yield chunk
    finally:
        answer.close()


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def with_params(message: McpMessage, params: dict[str, Any]) -> bytes:
    """The message re-encoded with other params (a sealed cursor opened, a name routed)."""
    assert message.payload is not None  # noqa: S101 - requests keep their payload
    return encode({**message.payload, "params": params})


"""The server's own stream: ``GET /mcp/{server}`` in a session (decision 0063).

A Streamable HTTP client may ``GET`` the MCP endpoint with its session id to open an SSE stream
on which the server sends what no request of the client's asked for (``notifications/
resources/list_changed``, log messages, requests of its own). The broker opens the server's
stream in the server's side of the caller's sealed session, with the broker's credential and a
hop token (never the caller's headers), and relays it event by event through the relay every
MCP stream uses (heartbeats while the server is quiet, ended by the kill switch, a suspended
caller or a killed tree about a second later). Only the caller's ``Last-Event-ID`` passes, so
the server can resume where the stream broke.

Policy: the stream is part of a session, so the caller (its whole chain) must still be allowed
to ``initialize`` with the server (``mcp:initialize`` on ``mcp:<server>``, the check the
virtual server uses to offer a server). A stream is not a call: no budget is charged. The
virtual server has no stream of its own (``HTTP_METHOD_NOT_ALLOWED``, 405); a server that
answers 405 (the transport allows servers without the stream) is answered 405 too.
"""

from __future__ import annotations

from broker.errors import HTTPMethodNotAllowedError, PolicyDeniedError
from broker.mcp.context import McpCallNext, McpContext
from broker.mcp.errors import (
    McpNotAcceptableError,
    McpServerBadResponseError,
    McpSessionNotFoundError,
)
from broker.mcp.forward import McpUpstream
from broker.mcp.reading import PROTOCOL_VERSION_HEADER, SESSION_HEADER, McpOperation
from broker.mcp.servers import McpServerRegistry
from broker.mcp.sessions import SessionSeal, check_session_version
from broker.mcp.stages import McpJudge
from broker.policy.decision import NO_POLICY_VERSION
from broker.types import Outcome, StreamReply

# What audit records, logs and the hop token's scope name the stream by.
LISTEN = McpOperation("GET", "lifecycle")
# What policy judges it as: being in a session with the server.
_OPENING = McpOperation("initialize", "lifecycle")


class ReadMcpListen:
    """A ``GET``: on the virtual server 405; the client must accept ``text/event-stream``; the
    server must be registered and the sealed session the caller's, for that server."""

    def __init__(self, registry: McpServerRegistry, seal: SessionSeal) -> None:
        self._registry = registry
        self._seal = seal

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        ctx.judged = LISTEN
        if ctx.virtual:
            raise HTTPMethodNotAllowedError(
                "The virtual server has no stream of its own: open one server's stream at"
                " /mcp/{server}.")
        accepted = {part.split(";")[0].strip().lower()
                    for part in ctx.headers.get("accept", "").split(",")}
        if not accepted & {"text/event-stream", "*/*"}:
            raise McpNotAcceptableError("The server's stream is SSE: accept text/event-stream.")
        ctx.server = self._registry.get(ctx.server_name)
        ctx.sessions = self._seal.open_from(ctx.caller, ctx.server.name,
                                            ctx.headers.get(SESSION_HEADER), required=True)
        self._registry.check_sessions(ctx.sessions)
        if session := ctx.sessions.get(ctx.server.name):
            check_session_version(session, ctx.headers.get(PROTOCOL_VERSION_HEADER))
            ctx.version = session.protocol_version
        return await call_next(ctx)


class McpListenPolicy:
    """The caller's chain must still be allowed to ``initialize`` with the server."""

    def __init__(self, judge: McpJudge) -> None:
        self._judge = judge

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        assert ctx.server is not None  # noqa: S101 - resolved earlier
        engine = self._judge.engine
        ctx.policy_version = engine.version if engine is not None else NO_POLICY_VERSION
        decision = self._judge.decide(ctx.chain, ctx.server.name, _OPENING)
        if decision is not None:
            if not decision.allowed:
                raise PolicyDeniedError(
                    metadata={"decision": decision.reason, "principal": decision.principal,
                              "server": ctx.server.name, "action": _OPENING.action})
            ctx.policy_rule = decision.rule.text if decision.rule else ""
        return await call_next(ctx)


class ForwardMcpListen:
    """Open the server's stream and relay it event by event."""

    def __init__(self, upstream: McpUpstream) -> None:
        self._upstream = upstream

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        server = ctx.server
        assert server is not None  # noqa: S101 - resolved earlier
        answer = await self._upstream.get(ctx, server, ctx.sessions.get(server.name))
        if answer.status == 405:
            answer.close()
            raise HTTPMethodNotAllowedError(
                "This MCP server offers no stream of its own: its messages come in the answers"
                " to requests.", metadata={"server": server.name})
        if answer.status == 404:
            answer.close()
            raise McpSessionNotFoundError()  # the server ended the session: start a new one
        if answer.status != 200 or not answer.is_event_stream:
            answer.close()
            raise McpServerBadResponseError(
                "The MCP server did not open an event stream.",
                metadata={"server": server.name}, detail=f"HTTP {answer.status}")
        events = self._upstream.events(ctx, server, answer, None,
                                       max_duration_s=self._upstream.parts.max_stream_s)
        return StreamReply(events, 200, {"cache-control": "no-cache"})

"""The virtual server's answers (decision 0049): ``initialize`` with every server the caller may
use, lists walked server by server, notifications to every server of the session, ``ping``
answered here, and a named call relayed to the server its prefix routes to (policy judged it
as that server's call before it got here).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from broker.errors import BrokerError
from broker.mcp.aggregate import Aggregate
from broker.mcp.context import VIRTUAL, McpContext
from broker.mcp.forward import McpUpstream, encode, with_params
from broker.mcp.listing import filter_result
from broker.mcp.reading import LIST_METHODS, SESSION_HEADER, McpOperation
from broker.mcp.servers import McpServerRegistry
from broker.mcp.sessions import CursorPosition, UpstreamSession
from broker.types import Outcome, Reply

log = logging.getLogger("a2a_broker.mcp")
SERVER_INFO = {"name": "a2a-broker (virtual MCP server)", "version": "1"}


class VirtualServer:
    def __init__(self, upstream: McpUpstream, registry: McpServerRegistry) -> None:
        self._upstream = upstream
        self._registry = registry

    async def answer(self, ctx: McpContext) -> Outcome:
        message, aggregate = ctx.message, ctx.aggregate
        assert message is not None and aggregate is not None  # noqa: S101 - earlier stages
        if message.method == "initialize":
            return await self._initialize(ctx, aggregate)
        if message.kind != "request":
            return await self._to_every_server(ctx)
        op = ctx.judged
        assert op is not None  # noqa: S101 - a request has one
        if op.method == "ping":
            return Reply(200, encode({"jsonrpc": "2.0", "id": _id(ctx), "result": {}}))
        if op.kind == "list":
            return await self._list(ctx, aggregate, op)
        server = ctx.server
        assert server is not None and ctx.routed_params is not None  # noqa: S101 - routed
        session = ctx.sessions.get(server.name)
        answer = await self._upstream.post(
            ctx, server, with_params(message, ctx.routed_params),
            version=session.protocol_version if session else ctx.version, session=session,
            hop_token=ctx.hop_token, name=op.name)
        return await self._upstream.relay(ctx, server, answer, on_message=None)

    async def _initialize(self, ctx: McpContext, aggregate: Aggregate) -> Outcome:
        """A session with every server the caller may use, opened all at once; one that fails
        is left out (and logged), so one broken server does not take the copilot's other
        tools away."""
        opened = await asyncio.gather(*(self._open(ctx, name) for name in aggregate.servers))
        results = {name: result for name, result, _ in opened if result is not None}
        upstreams = {name: session for name, _, session in opened if session is not None}
        merged = Aggregate(list(results)).merge_initialize(results, SERVER_INFO)
        token = self._upstream.parts.sessions.issue(ctx.caller or "", VIRTUAL, upstreams)
        body = encode({"jsonrpc": "2.0", "id": _id(ctx), "result": merged})
        return Reply(200, body, headers={SESSION_HEADER: token})

    async def _open(
        self, ctx: McpContext, name: str
    ) -> tuple[str, dict[str, Any] | None, UpstreamSession | None]:
        server = self._registry.find(name)
        if server is None:  # removed since this request's server list was read
            return name, None, None
        token, _ = self._upstream.parts.mint.mint(ctx, name)
        try:
            answer = await self._upstream.post(ctx, server, ctx.body, version=ctx.version,
                                               session=None, hop_token=token)
            session_id = answer.headers.get(SESSION_HEADER, "")
            result = (await self._upstream.one_answer(ctx, server, answer))["result"]
        except BrokerError as err:
            log.warning("MCP server %s left out of a virtual session: %s", name, err.reason)
            return name, None, None
        version = str(result.get("protocolVersion", ""))
        return name, result, UpstreamSession(session_id, version, server.epoch)

    async def _to_every_server(self, ctx: McpContext) -> Outcome:
        """A notification (or a client's answer) goes to every server of the session."""
        for name, session in ctx.sessions.items():
            server = self._registry.find(name)
            if server is None:
                continue  # removed since the session opened
            token, _ = self._upstream.parts.mint.mint(ctx, name)
            try:
                answer = await self._upstream.post(ctx, server, ctx.body,
                                                   version=session.protocol_version,
                                                   session=session, hop_token=token)
            except BrokerError as err:
                log.warning("notification not delivered to MCP server %s: %s", name, err.reason)
                continue
            answer.close()
        return Reply(202, b"")

    async def _list(self, ctx: McpContext, aggregate: Aggregate, op: McpOperation) -> Outcome:
        """One server's page per page, its items prefixed and judged as that server's; the
        sealed cursor says which server and where in its list."""
        parts, caller = self._upstream.parts, ctx.caller or ""
        member = LIST_METHODS[op.method]
        if op.cursor is not None:
            position = parts.cursors.open(caller, VIRTUAL, op.method, op.cursor)
        elif aggregate.servers:
            position = CursorPosition(aggregate.servers[0], "")
        else:
            return Reply(200, encode({"jsonrpc": "2.0", "id": _id(ctx), "result": {member: []}}))
        if position.server not in aggregate.servers:  # no longer offered to this caller
            return Reply(200, encode({"jsonrpc": "2.0", "id": _id(ctx), "result": {member: []}}))
        server = self._registry.get(position.server)
        assert ctx.message is not None  # noqa: S101 - parsed earlier
        params = {k: v for k, v in (ctx.message.params or {}).items() if k != "cursor"}
        if position.upstream_cursor:
            params["cursor"] = position.upstream_cursor
        session = ctx.sessions.get(server.name)
        token, _ = parts.mint.mint(ctx, server.name)
        answer = await self._upstream.post(
            ctx, server, with_params(ctx.message, params),
            version=session.protocol_version if session else ctx.version, session=session,
            hop_token=token)
        payload = await self._upstream.one_answer(ctx, server, answer)
        result = payload["result"]
        following = aggregate.next_position(server.name, result.get("nextCursor"))
        result = filter_result(op.method, result, lambda item: parts.judge.allows(
            ctx.chain, server.name, item), None)
        aggregate.rename_items(op.method, server.name, result)
        if following is not None:
            result["nextCursor"] = parts.cursors.issue(caller, VIRTUAL, op.method,
                                                       CursorPosition(*following))
        return Reply(200, encode({**payload, "result": result}))


def _id(ctx: McpContext) -> Any:
    raw = ctx.jsonrpc_id
    return json.loads(bytes(raw)) if raw is not None else None

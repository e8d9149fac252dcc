"""TEST-ONLY: a minimal MCP relay assembled from ``broker.mcp``'s pieces, to prove them against
real MCP SDK clients and servers before the shared request pipeline hosts MCP.

This is not the broker's MCP edge and must not become one: it has no audit, no budgets, no
delegation context, a dict for credentials and a predicate for policy. What it shows is that the
pieces fit: the reading (``read_message``), sealed sessions and cursors, the upstream headers
(the broker's credential, never the caller's), the SSE relay event by event, list filtering,
and the virtual server. Each step is a comment naming the pipeline stage that will own it.

    POST /mcp/{server}   one registered server
    POST /mcp            the virtual server over every server registered with aggregate = true
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from broker.errors import BrokerError, PolicyDeniedError, UnauthenticatedError
from broker.mcp.aggregate import Aggregate
from broker.mcp.errors import (
    McpServerBadResponseError,
    McpServerTimeoutError,
    McpSessionNotFoundError,
)
from broker.mcp.events import relay_json, relay_sse
from broker.mcp.listing import filter_result
from broker.mcp.reading import (
    HANDSHAKE_VERSIONS,
    LIST_METHODS,
    PROTOCOL_VERSION_HEADER,
    SESSION_HEADER,
    McpMessage,
    McpOperation,
    McpReadError,
    check_accept,
    read_message,
    request_version,
)
from broker.mcp.servers import McpServer, McpServerRegistry, upstream_headers
from broker.mcp.sessions import (
    CursorPosition,
    CursorSeal,
    SessionSeal,
    UpstreamSession,
    check_session_version,
)
from broker.mcp.wire import EVENT_STREAM, error_reply

Policy = Callable[[str, str, McpOperation], bool]  # (caller, server, operation) -> allowed
VIRTUAL = "*"  # the virtual server's target name in seals


@dataclass
class Passthrough:
    registry: McpServerRegistry
    sessions: SessionSeal
    cursors: CursorSeal
    callers: dict[str, str]  # bearer token -> caller
    policy: Policy
    max_event_bytes: int = 1 << 20
    hop_tokens: list[str] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/mcp", self.virtual)
        app.router.add_post("/mcp/{server}", self.single)
        app.router.add_delete("/mcp/{server}", self.end_session)
        app.router.add_get("/mcp/{server}", _no_get_stream)
        app.router.add_get("/mcp", _no_get_stream)
        app.on_cleanup.append(self._close)
        return app

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(auto_decompress=False)
        return self._http

    async def _close(self, _: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    # --- one server ----------------------------------------------------------------------------

    async def single(self, request: web.Request) -> web.StreamResponse:
        message: McpMessage | None = None
        try:
            caller, message = await self._read(request)  # stages: authenticate, parse
            server = self.registry.get(request.match_info["server"])  # stage: resolve target
            if message.method == "initialize":
                return await self._initialize(request, caller, message, server)
            session = self._session(request, caller, server.name)  # stage: sessions
            if session is not None:
                check_session_version(session, request.headers.get(PROTOCOL_VERSION_HEADER))
            op = message.operation
            if op is not None and op.kind != "list" and not self.policy(caller, server.name, op):
                raise PolicyDeniedError(metadata={"action": op.action})  # stage: policy
            body = await request.read()
            if op is not None and op.kind == "list" and op.cursor is not None:
                position = self.cursors.open(caller, server.name, op.method, op.cursor)
                body = _with_params(message, {**(message.params or {}),
                                              "cursor": position.upstream_cursor})
            on_message = self._list_filter(caller, server.name, message)
            version = session.protocol_version if session else request_version(
                request.headers, message)
            upstream = await self._post(server, body, request, version, session)  # forward
            return await self._answer(request, upstream, message, caller=caller, server=server,
                                      on_message=on_message)
        except BrokerError as err:
            return _error(err, message.id if message else None)
        except McpReadError as bad:
            return _error(bad.error, bad.request_id)

    async def _initialize(
        self, request: web.Request, caller: str, message: McpMessage, server: McpServer
    ) -> web.Response:
        """The initialize answer is read whole (one message) for the version the server
        negotiated, which the sealed session id carries."""
        upstream = await self._post(server, await request.read(), request,
                                    message.protocol_version or "", None)
        session_id = upstream.headers.get(SESSION_HEADER, "")
        answer = await _one_answer(upstream, message, self.max_event_bytes)
        negotiated = str(answer["result"].get("protocolVersion", ""))
        headers = {}
        if session_id:
            headers[SESSION_HEADER] = self.sessions.issue(
                caller, server.name, {server.name: UpstreamSession(session_id, negotiated)})
        return web.json_response(answer, headers=headers)

    async def end_session(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        server = self.registry.get(request.match_info["server"])
        session = self._session(request, caller, server.name)
        if session is not None and session.session_id:
            headers = upstream_headers(server, [], protocol_version=session.protocol_version,
                                       session=session)
            async with self.http.delete(server.url, headers=headers):
                pass
        return web.Response(status=204)

    def _list_filter(self, caller: str, server: str, message: McpMessage) -> Any:
        op = message.operation
        if op is None or op.kind != "list":
            return None

        async def on_message(answer: McpMessage, data: bytes) -> bytes | None:
            if answer.kind != "response" or answer.is_error or answer.id != message.id:
                return data
            assert answer.payload is not None
            result = filter_result(
                op.method, answer.payload["result"],
                lambda item: self.policy(caller, server, item),
                lambda c: self.cursors.issue(caller, server, op.method,
                                             CursorPosition(server, c)))
            return _encode({**answer.payload, "result": result})
        return on_message

    async def _answer(
        self, request: web.Request, upstream: aiohttp.ClientResponse, message: McpMessage, *,
        caller: str, server: McpServer, on_message: Any,
    ) -> web.StreamResponse:
        headers: dict[str, str] = {}
        if upstream.status == 202:
            upstream.release()
            return web.Response(status=202, headers=headers)
        if upstream.status == 404 and request.headers.get(SESSION_HEADER):
            upstream.release()
            raise McpSessionNotFoundError()
        ctype = upstream.headers.get("content-type", "")
        if ctype.startswith(EVENT_STREAM):
            return await self._stream(request, upstream, message, server=server,
                                      on_message=on_message, headers=headers)
        body = await _read_bounded(upstream, self.max_event_bytes)
        data = await relay_json(body, request_id=message.id, on_message=on_message)
        return web.Response(status=upstream.status if upstream.status < 300 else 200,
                            body=data, content_type="application/json", headers=headers)

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, message: McpMessage, *,
        server: McpServer, on_message: Any, headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={
            **headers, "content-type": EVENT_STREAM, "cache-control": "no-cache"})
        await response.prepare(request)
        try:
            async for frame in relay_sse(
                _chunks(upstream), request_id=message.id, on_message=on_message,
                idle_timeout_s=server.idle_timeout_s, max_event_bytes=self.max_event_bytes,
            ):
                await response.write(frame)
        finally:
            upstream.close()
        await response.write_eof()
        return response

    # --- the virtual server --------------------------------------------------------------------

    async def virtual(self, request: web.Request) -> web.StreamResponse:
        message: McpMessage | None = None
        try:
            caller, message = await self._read(request)
            return await self._virtual(request, caller, message)
        except BrokerError as err:
            return _error(err, message.id if message else None)
        except McpReadError as bad:
            return _error(bad.error, bad.request_id)

    async def _virtual(
        self, request: web.Request, caller: str, message: McpMessage
    ) -> web.StreamResponse:
        servers = self.registry.aggregated()
        agg = Aggregate([s.name for s in servers])
        if message.method == "initialize":
            return await self._virtual_initialize(request, caller, message, servers, agg)
        upstreams = self._virtual_session(request, caller)
        if message.kind != "request":  # notifications and answers go to every server
            for server in servers:
                await self._fire(server, await request.read(), request, upstreams)
            return web.Response(status=202)
        op = message.operation
        assert op is not None
        if op.method == "ping":
            return web.json_response({"jsonrpc": "2.0", "id": json.loads(bytes(message.id
                                      or b"null")), "result": {}})
        if op.kind == "list":
            return await self._virtual_list(request, caller, message, agg, upstreams)
        routed = agg.route(op.method, message.params or {})
        inner = McpOperation(op.method, op.kind, routed.name)
        if not self.policy(caller, routed.server, inner):
            raise PolicyDeniedError(metadata={"action": inner.action,
                                              "server": routed.server})
        server = self.registry.get(routed.server)
        body = _with_params(message, routed.params)
        session = upstreams.get(server.name)
        version = session.protocol_version if session else request_version(request.headers)
        upstream = await self._post(server, body, request, version, session, name=routed.name)
        return await self._answer(request, upstream, message, caller=caller, server=server,
                                  on_message=None)

    async def _virtual_initialize(
        self, request: web.Request, caller: str, message: McpMessage, servers: list[McpServer],
        agg: Aggregate,
    ) -> web.Response:
        body = await request.read()
        results: dict[str, dict[str, Any]] = {}
        upstreams: dict[str, UpstreamSession] = {}
        for server in servers:
            upstream = await self._post(server, body, request, message.protocol_version or "",
                                        None)
            answer = await _one_answer(upstream, message, self.max_event_bytes)
            results[server.name] = answer["result"]
            upstreams[server.name] = UpstreamSession(
                upstream.headers.get(SESSION_HEADER, ""), answer["result"]["protocolVersion"])
        merged = agg.merge_initialize(results, {"name": "a2a-broker (virtual)", "version": "1"})
        token = self.sessions.issue(caller, VIRTUAL, upstreams)
        payload = {"jsonrpc": "2.0", "id": json.loads(bytes(message.id or b"null")),
                   "result": merged}
        return web.json_response(payload, headers={SESSION_HEADER: token})

    async def _virtual_list(
        self, request: web.Request, caller: str, message: McpMessage, agg: Aggregate,
        upstreams: dict[str, UpstreamSession],
    ) -> web.Response:
        op = message.operation
        assert op is not None
        if op.cursor is not None:
            position = self.cursors.open(caller, VIRTUAL, op.method, op.cursor)
        else:
            position = CursorPosition(agg.servers[0], "")
        server = self.registry.get(position.server)
        params = {k: v for k, v in (message.params or {}).items() if k != "cursor"}
        if position.upstream_cursor:
            params["cursor"] = position.upstream_cursor
        session = upstreams.get(server.name)
        upstream = await self._post(server, _with_params(message, params), request,
                                    session.protocol_version if session else "", session)
        answer = await _one_answer(upstream, message, self.max_event_bytes)
        result = answer["result"]
        following = agg.next_position(server.name, result.get("nextCursor"))
        agg.rename_items(op.method, server.name, result)
        result.pop("nextCursor", None)
        inner = LIST_METHODS[op.method]
        result = filter_result(op.method, result, lambda item: self.policy(
            caller, server.name, McpOperation(item.method, item.kind,
                                              agg.inner(_member(item), item.name)[1])), None)
        if following is not None:
            result["nextCursor"] = self.cursors.issue(caller, VIRTUAL, op.method,
                                                      CursorPosition(*following))
        assert inner in result
        return web.json_response({**answer, "result": result})

    def _virtual_session(self, request: web.Request, caller: str) -> dict[str, UpstreamSession]:
        handshake = request_version(request.headers) in HANDSHAKE_VERSIONS
        return self.sessions.open_from(caller, VIRTUAL, request.headers.get(SESSION_HEADER),
                                       required=handshake)

    async def _fire(self, server: McpServer, body: bytes, request: web.Request,
                    upstreams: dict[str, UpstreamSession]) -> None:
        session = upstreams.get(server.name)
        version = session.protocol_version if session else request_version(request.headers)
        upstream = await self._post(server, body, request, version, session)
        upstream.release()

    # --- shared steps --------------------------------------------------------------------------

    def _caller(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        caller = self.callers.get(token) if scheme.lower() == "bearer" else None
        if caller is None:
            raise UnauthenticatedError()
        return caller

    async def _read(self, request: web.Request) -> tuple[str, McpMessage]:
        caller = self._caller(request)
        check_accept({k.lower(): v for k, v in request.headers.items()})
        raw = [(k, v) for k, v in request.raw_headers for k, v in [(k.decode(), v.decode())]]
        lowered = {k.lower(): v for k, v in request.headers.items()}
        return caller, read_message(await request.read(), lowered, raw)

    def _session(self, request: web.Request, caller: str, server: str) -> UpstreamSession | None:
        token = request.headers.get(SESSION_HEADER)
        if not token:
            return None
        return self.sessions.open(caller, server, token).get(server)

    async def _post(self, server: McpServer, body: bytes, request: web.Request, version: str,
                    session: UpstreamSession | None, *,
                    name: str | None = None) -> aiohttp.ClientResponse:
        inbound = [(k, v) for k, v in request.headers.items()]
        hop = f"hop-token-for-{server.name}"  # the pipeline mints a real one
        self.hop_tokens.append(hop)
        headers = upstream_headers(server, inbound, protocol_version=version or "2025-11-25",
                                   session=session, hop_token=hop, name=name)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5,
                                        sock_read=server.idle_timeout_s)
        try:
            return await self.http.post(server.url, data=body, headers=headers, timeout=timeout)
        except TimeoutError:
            raise McpServerTimeoutError() from None
        except aiohttp.ClientError as exc:
            raise McpServerBadResponseError(detail=str(exc)) from None


def _member(item: McpOperation) -> str:
    return "uri" if item.kind == "resource" else "name"


async def _no_get_stream(request: web.Request) -> web.Response:
    return web.Response(status=405)


def _error(err: BrokerError, request_id: msgspec.Raw | None) -> web.Response:
    reply = error_reply(err, request_id)
    return web.Response(status=reply.status, body=reply.body, content_type="application/json",
                        headers=reply.headers)


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _with_params(message: McpMessage, params: dict[str, Any]) -> bytes:
    assert message.payload is not None
    return _encode({**message.payload, "params": params})


async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in upstream.content.iter_any():
        yield chunk


async def _read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    body = await upstream.content.read(limit + 1)
    upstream.release()
    if len(body) > limit:
        raise McpServerBadResponseError("The MCP server's answer is too large.")
    return body


async def _one_answer(upstream: aiohttp.ClientResponse, message: McpMessage,
                      limit: int) -> dict[str, Any]:
    """The response to ``message`` in an upstream answer (JSON or SSE), read whole: used for
    initialize and list answers, which the broker rewrites."""
    found: list[dict[str, Any]] = []

    async def keep(answer: McpMessage, data: bytes) -> bytes | None:
        if answer.kind == "response" and answer.id == message.id and answer.payload:
            found.append(answer.payload)
        return data

    if upstream.headers.get("content-type", "").startswith(EVENT_STREAM):
        frames = relay_sse(_chunks(upstream), request_id=message.id, on_message=keep,
                           idle_timeout_s=30, max_event_bytes=limit)
        async with contextlib.aclosing(frames):
            async for _ in frames:
                if found:
                    break
        upstream.close()
    else:
        await relay_json(await _read_bounded(upstream, limit), request_id=message.id,
                         on_message=keep)
    if not found or "result" not in found[0]:
        raise McpServerBadResponseError()
    return found[0]

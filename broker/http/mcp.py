"""The MCP edge (Streamable HTTP): thin, like the A2A and LLM edges. A POST takes the raw ASGI
path (``broker.http.mediation.MediationEdges``, as A2A and LLM calls do); the Litestar routes
below answer the rest, and a POST when the app runs without that front.

    POST   /mcp/{server}   one registered MCP server        (a JSON-RPC message)
    POST   /mcp            the virtual server over every server registered with aggregate = true
    DELETE /mcp[/{server}] end the caller's session
    GET    /mcp/{server}   the server's own stream in the caller's session (SSE)
    GET    /mcp            405: the virtual server has no stream of its own
"""

from __future__ import annotations

from typing import cast

from litestar import Response, delete, get, post
from litestar.params import FromPath
from litestar.response import Stream

from broker.http.mediation import body_reader, inbound_headers, to_response
from broker.http.state import AnyRequest
from broker.mcp.context import VIRTUAL, McpContext
from broker.pipeline.mcp import McpGateway


def gateway_of(request: AnyRequest) -> McpGateway:
    return cast("McpGateway", request.app.state.runtime.mcp)


def _context(request: AnyRequest, server: str) -> McpContext:
    raw = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"])
    return McpContext(
        server_name=server,
        http_method=request.method,
        raw_headers=raw,
        headers=inbound_headers(request),
        read_body=body_reader(request),
    )


@post(["/mcp"], status_code=200)
async def mcp_virtual(request: AnyRequest) -> Response[bytes] | Stream:
    return to_response(await gateway_of(request).call(_context(request, VIRTUAL)))


@post(["/mcp/{server:str}"], status_code=200)
async def mcp_server(request: AnyRequest, server: FromPath[str]) -> Response[bytes] | Stream:
    return to_response(await gateway_of(request).call(_context(request, server)))


@delete(["/mcp"], status_code=200)
async def mcp_virtual_end(request: AnyRequest) -> Response[bytes] | Stream:
    return to_response(await gateway_of(request).end_session(_context(request, VIRTUAL)))


@delete(["/mcp/{server:str}"], status_code=200)
async def mcp_server_end(request: AnyRequest, server: FromPath[str]) -> Response[bytes] | Stream:
    return to_response(await gateway_of(request).end_session(_context(request, server)))


@get(["/mcp"], status_code=200)
async def mcp_virtual_listen(request: AnyRequest) -> Response[bytes] | Stream:
    return to_response(await gateway_of(request).listen(_context(request, VIRTUAL)))


@get(["/mcp/{server:str}"], status_code=200)
async def mcp_server_listen(request: AnyRequest, server: FromPath[str]) -> Response[bytes] | Stream:
    return to_response(await gateway_of(request).listen(_context(request, server)))


mcp_route_handlers = [mcp_virtual, mcp_server, mcp_virtual_end, mcp_server_end,
                      mcp_virtual_listen, mcp_server_listen]

__all__ = ["mcp_route_handlers"]

"""A real MCP server for the tests, built with the official ``mcp`` SDK, run as its own process.

    python tests/mcp_rig/rig_server.py --port P --name alpha --token T [--token T2] [--json]
                                       [--garbage]

Streamable HTTP at ``/mcp``; ``GET /healthz`` answers 200 when it is up. Every MCP request must
carry ``Authorization: Bearer T`` (the credential the broker holds for this server; one of them
when ``--token`` is repeated, as while a credential is rotated), else 401.
Tools: ``add``, ``create_issue``, ``delete_repo`` (for policy to deny), ``whoami`` (the server's
name), ``seen_headers`` (the identity headers this request arrived with), ``count_slowly``
(reports progress, one step every 0.3 s, then answers), ``announce`` (sends
``notifications/resources/list_changed`` on the server's own GET stream), ``hang`` (never
answers), plus
``filler_NN`` tools so that lists need several pages (this server pages its lists by 5). A
prompt ``greet`` and a resource ``note://hello``.

``--garbage`` serves no MCP at all: every POST is answered 200 ``text/event-stream`` whose
events are not JSON-RPC, the way a broken or hostile server might answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ListToolsResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

PAGE = 5
SEEN: dict[str, str] = {}


class PagedServer(MCPServer):
    """Pages ``tools/list`` by ``PAGE``, its cursor a plain offset (as guessable as cursors get:
    the broker's sealing is what keeps callers from making up their own)."""

    async def _handle_list_tools(self, ctx: Any, params: Any) -> ListToolsResult:
        tools = await self.list_tools()
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + PAGE
        return ListToolsResult(tools=tools[start:end],
                               next_cursor=str(end) if end < len(tools) else None)


def build_server(name: str) -> MCPServer:
    server = PagedServer(name=name, instructions=f"the {name} test server")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def create_issue(title: str) -> str:
        """Open an issue."""
        return f"{name} opened: {title}"

    @server.tool()
    def delete_repo(repo: str) -> str:
        """Delete a repository (policy denies it in the tests)."""
        return f"{name} deleted {repo}"

    @server.tool()
    def whoami() -> str:
        return name

    @server.tool()
    def seen_headers() -> str:
        return json.dumps(SEEN)

    @server.tool()
    async def count_slowly(steps: int, ctx: Context) -> str:
        """Report progress once per step, 0.3 s apart."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await asyncio.sleep(0.3)
        return f"counted to {steps}"

    @server.tool()
    async def announce(ctx: Context) -> str:
        """Tell the session its resources changed: a notification no request asked for, so it
        goes on the server's own stream (the client's GET)."""
        await ctx.session.send_resource_list_changed()
        return "announced"

    @server.tool()
    async def hang() -> str:
        await asyncio.sleep(3600)
        return "never"

    for i in range(12):
        server.add_tool(_filler(i), name=f"filler_{i:02d}", description="padding for pages")

    @server.prompt()
    def greet(who: str) -> str:
        return f"Say hello to {who}."

    @server.resource("note://hello")
    def hello() -> str:
        return "hello from " + name

    return server


def _filler(i: int) -> Any:
    def filler() -> int:
        return i
    return filler


class RequireToken:
    """401 unless the broker's credential for this server is presented; remembers the identity
    headers of the last request (the ``seen_headers`` tool reports them)."""

    def __init__(self, app: ASGIApp, tokens: list[str]) -> None:
        self.app, self.expected = app, {f"Bearer {token}".encode() for token in tokens}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization") not in self.expected:
                await PlainTextResponse("unauthorized", 401)(scope, receive, send)
                return
            SEEN.clear()
            for key in (b"authorization", b"a2a-delegation", b"cookie", b"x-caller"):
                if key in headers:
                    SEEN[key.decode()] = headers[key].decode()
        await self.app(scope, receive, send)


def garbage_app() -> Starlette:
    async def garbage(request: Request) -> Response:
        async def events() -> Any:
            yield (b'data: {"jsonrpc":"2.0","method":"notifications/message",'
                   b'"params":{"level":"info","data":"about to misbehave"}}\n\n')
            yield b"data: <html>this is not an MCP message</html>\n\n"

        if request.method == "POST":
            return StreamingResponse(events(), media_type="text/event-stream")
        return Response(status_code=405)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/healthz", healthz),
                             Route("/mcp", garbage, methods=["GET", "POST", "DELETE"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="alpha")
    parser.add_argument("--token", action="append", default=[],
                        help="a credential the broker may present (repeat to accept several)")
    parser.add_argument("--json", action="store_true", help="answer JSON, not SSE")
    parser.add_argument("--garbage", action="store_true")
    args = parser.parse_args()
    if args.garbage:
        app: ASGIApp = garbage_app()
    else:
        mcp_app = build_server(args.name).streamable_http_app(json_response=args.json)

        async def healthz(request: Request) -> Response:
            return JSONResponse({"ok": True})

        inner = Starlette(routes=[Route("/healthz", healthz), Mount("/", mcp_app)],
                          lifespan=mcp_app.router.lifespan_context)
        app = RequireToken(inner, args.token or [""])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""A tiny, fast MCP upstream (Streamable HTTP, JSON answers, no sessions): a raw ASGI app, so
the MCP server is never the bottleneck when the broker's MCP cost is measured.

    python -m benchmarks.mcp_upstream --port N

``POST /mcp`` answers ``initialize``, ``tools/list`` (50 tools) and ``tools/call`` (one text
block) with one JSON message, notifications with 202. ``GET /_ready`` answers once serving.
It reads only the request's ``id`` and ``method``; it is a load target, not a real server (the
tests use the ``mcp`` SDK's).
"""

from __future__ import annotations

import argparse
import json

import msgspec

from benchmarks.upstream import Receive, Scope, Send, read_body, reply, serve

PATH = "/mcp"
_TOOLS = json.dumps([{"name": f"tool_{i:02d}", "description": "d" * 60,
                      "inputSchema": {"type": "object"}} for i in range(50)]).encode()
_RESULTS = {
    "initialize": b'{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},'
                  b'"serverInfo":{"name":"bench","version":"1"}}',
    "tools/list": b'{"tools":' + _TOOLS + b"}",
    "tools/call": b'{"content":[{"type":"text","text":"done"}],"isError":false}',
}


class _Envelope(msgspec.Struct):
    method: str = ""
    id: msgspec.Raw = msgspec.Raw(b"")  # empty: a notification


_decode = msgspec.json.Decoder(_Envelope).decode


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == PATH and scope["method"] == "POST":
        env = _decode(await read_body(receive))
        if not bytes(env.id):
            await reply(send, 202, b"")
            return
        result = _RESULTS.get(env.method, b"{}")
        await reply(send, 200, b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (bytes(env.id), result))
    elif scope["path"] == "/_ready":
        await reply(send, 200, b'{"status":"ok"}')
    else:
        await reply(send, 404, b"{}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    serve(app, parser.parse_args(argv).port)


if __name__ == "__main__":
    main()

"""A tiny, fast A2A JSON-RPC upstream: a raw ASGI app, so the agent is never the bottleneck.

    python -m benchmarks.upstream --port N [--events 10]

``POST /jsonrpc`` answers ``SendMessage`` with a completed task (a fresh task id each time, as a
real agent would, so the broker records a new task route per request) and
``SendStreamingMessage`` with ``--events`` SSE events, each written as it is produced.
``GET /.well-known/agent-card.json`` serves its card, ``GET /_ready`` answers once serving.
It reads only the request's ``id`` and ``method``; it is a load target, not an agent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSONRPC_PATH = "/jsonrpc"
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class _Envelope(msgspec.Struct):
    method: str = ""
    id: msgspec.Raw = msgspec.Raw(b"null")


_decode = msgspec.json.Decoder(_Envelope).decode
_ids = itertools.count()
_PREFIX = os.urandom(4).hex()


def card(name: str, base_url: str) -> dict[str, Any]:
    """An A2A 1.0 card for this upstream (JSON-RPC binding only, streaming)."""
    return {
        "name": name,
        "description": "benchmark upstream",
        "version": "1.0.0",
        "supportedInterfaces": [
            {"url": base_url + JSONRPC_PATH, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "capabilities": {"streaming": True, "pushNotifications": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "echo", "name": "echo", "description": "Answers.", "tags": ["bench"]}],
    }


def _task(task_id: str, state: str) -> bytes:
    return (
        b'{"id":"%s","contextId":"ctx-%s","status":{"state":"%s"},'
        b'"artifacts":[{"artifactId":"a1","parts":[{"text":"echo: hello"}]}]}'
        % (task_id.encode(), task_id.encode(), state.encode())
    )


def unary_body(rpc_id: bytes, task_id: str) -> bytes:
    task = _task(task_id, "TASK_STATE_COMPLETED")
    return b'{"jsonrpc":"2.0","id":%s,"result":{"task":%s}}' % (rpc_id, task)


def stream_events(rpc_id: bytes, task_id: str, count: int) -> list[bytes]:
    """``count`` SSE events: the task, artifact updates, then the final status update."""
    tid = task_id.encode()
    results = [b'{"task":' + _task(task_id, "TASK_STATE_WORKING") + b"}"]
    for n in range(max(count - 2, 0)):
        results.append(
            b'{"artifactUpdate":{"taskId":"%s","contextId":"ctx-%s","append":true,'
            b'"artifact":{"artifactId":"a1","parts":[{"text":"chunk %d "}]}}}' % (tid, tid, n)
        )
    results.append(
        b'{"statusUpdate":{"taskId":"%s","contextId":"ctx-%s",'
        b'"status":{"state":"TASK_STATE_COMPLETED"},"final":true}}' % (tid, tid)
    )
    return [b'data: {"jsonrpc":"2.0","id":%s,"result":%s}\n\n' % (rpc_id, r) for r in results]


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def reply(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


App = Callable[[Scope, Receive, Send], Awaitable[None]]


def serve(app: App, port: int, **options: Any) -> None:
    """Run ``app`` on 127.0.0.1:``port`` the way every benchmark peer runs: uvicorn, uvloop,
    httptools, no access log."""
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off", **options)  # fmt: skip


def make_app(name: str, events: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    card_bytes: list[bytes] = []  # filled on first request: the port is known only then

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to set up
        path = scope["path"]
        if path == JSONRPC_PATH and scope["method"] == "POST":
            env = _decode(await read_body(receive))
            task_id = f"{_PREFIX}-{next(_ids)}"
            if env.method == "SendStreamingMessage":
                await send({"type": "http.response.start", "status": 200, "headers": _SSE})
                for event in stream_events(bytes(env.id), task_id, events):
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            await reply(send, 200, unary_body(bytes(env.id), task_id))
        elif path == "/.well-known/agent-card.json":
            if not card_bytes:
                host, port = scope["server"]
                card_bytes.append(json.dumps(card(name, f"http://{host}:{port}")).encode())
            await reply(send, 200, card_bytes[0])
        elif path == "/_ready":
            await reply(send, 200, b'{"status":"ok"}')
        else:
            await reply(send, 404, b'{"error":"not found"}')

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--events", type=int, default=10)
    args = parser.parse_args()
    serve(make_app(args.name, args.events), args.port)


if __name__ == "__main__":
    main()

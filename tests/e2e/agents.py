"""Upstream agents for the end-to-end suite, each runnable as its own process.

    python -m tests.e2e.agents <kind> --port N

Kinds:

* ``echo``: a real a2a-sdk 1.3.0 agent (JSON-RPC and HTTP+JSON, streaming; no push notifications,
  no extended card). Its task works, adds an artifact ``echo: <text>`` and completes.
* ``asker``: like ``echo``, but a new task asks for input first (``TASK_STATE_INPUT_REQUIRED``,
  "Which table?"); the caller's reply on the same task is echoed and the task completes.
* ``gated``: like ``echo``, but after reporting WORKING the task blocks until the test releases it
  with ``POST /_gates/{text}/release`` (``text`` is the user message). ``GET /_gates`` shows every
  gate and whether it is ``waiting``, ``released`` or ``cancelled``.
* ``held``: like ``echo``, but holds each request before it does anything (no task, no event
  yet) until the test releases it: ``GET /_gates/{text}/waiting`` answers once the request is
  held, ``POST /_gates/{text}/release`` lets it go. The test can so act (kill the broker's
  store, say) at the exact moment between the broker's last write before forwarding and the
  agent's first answer.
* ``garbage``: not an A2A agent. Under ``/html/...`` it answers 200 ``text/html``, under
  ``/badjson/...`` 200 ``application/json`` that does not parse, under ``/500/...`` HTTP 500 HTML;
  under ``/rpc418/`` a JSON-RPC result with HTTP 418, under ``/forge/`` an error claiming the
  broker's domain, under ``/ssebad/`` and ``/sseforge/`` a stream whose second frame is not JSON
  or is such a forged error.
* ``hang``: accepts connections and reads requests but never answers (except ``GET /_ready``).

Both A2A kinds sit behind a recorder: every request's method, path, headers and raw body (base64)
is kept and listed by ``GET /_recorded``, so a test can see exactly what reached the upstream.
Every kind answers ``GET /_ready`` once it is serving. Processes exit when their parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
GATE_WAIT_S = 20.0  # how long GET /_gates/{key}/waiting waits for a request to arrive

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def agent_card(name: str, base_url: str, *, push: bool = False) -> AgentCard:
    """The card an e2e agent serves: both bindings, streaming, nothing else (``push``: a card
    that declares push notifications, for the broker's push-config checks)."""
    return AgentCard(
        name=name,
        description=f"e2e test agent '{name}'",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=base_url + JSONRPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0"
            ),
            AgentInterface(
                url=base_url + REST_PATH, protocol_binding="HTTP+JSON", protocol_version="1.0"
            ),
        ],
        capabilities=AgentCapabilities(
            streaming=True, push_notifications=push, extended_agent_card=False
        ),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="Echoes the text.", tags=["test"])],
    )


# --- executors ------------------------------------------------------------------------------


async def _start(context: RequestContext, event_queue: EventQueue) -> TaskUpdater:
    """Enqueue the task (new or continued) and report WORKING."""
    task = context.current_task
    if task is None:
        assert context.message is not None
        task = new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
    updater = TaskUpdater(event_queue, task.id, task.context_id)
    await updater.start_work()
    return updater


async def _finish(updater: TaskUpdater, text: str) -> None:
    reply = f"echo: {text}"
    await updater.add_artifact(parts=[Part(text=reply)], name="echo")
    await updater.complete(
        new_text_message(reply, context_id=updater.context_id, task_id=updater.task_id)
    )


class EchoExecutor(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = await _start(context, event_queue)
        await _finish(updater, context.get_user_input())

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        assert task is not None
        await TaskUpdater(event_queue, task.id, task.context_id).cancel()


class AskerExecutor(EchoExecutor):
    """Asks for input on a new task (``INPUT_REQUIRED``); echoes the answer and completes."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        asked = context.current_task is not None
        updater = await _start(context, event_queue)
        if asked:
            await _finish(updater, context.get_user_input())
            return
        await updater.requires_input(new_text_message(
            "Which table?", context_id=updater.context_id, task_id=updater.task_id
        ))


class Gates:
    """Named gates a task waits on; the test opens them over HTTP."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._arrivals: dict[str, asyncio.Event] = {}
        self.states: dict[str, str] = {}

    def _event(self, key: str) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def arrived(self, key: str) -> asyncio.Event:
        """Set once a task waits at gate ``key``."""
        return self._arrivals.setdefault(key, asyncio.Event())

    async def wait(self, key: str) -> None:
        self.states.setdefault(key, "waiting")
        self.arrived(key).set()
        try:
            await self._event(key).wait()
        except asyncio.CancelledError:
            self.states[key] = "cancelled"
            raise

    def release(self, key: str) -> None:
        self.states[key] = "released"
        self._event(key).set()


class GatedExecutor(EchoExecutor):
    def __init__(self, gates: Gates) -> None:
        self._gates = gates

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = await _start(context, event_queue)
        text = context.get_user_input()
        await self._gates.wait(text)
        await _finish(updater, text)


class HeldExecutor(EchoExecutor):
    """Holds the request before anything is enqueued, so even a stream's first event waits."""

    def __init__(self, gates: Gates) -> None:
        self._gates = gates

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        await self._gates.wait(text)
        await _finish(await _start(context, event_queue), text)


# --- the recorder front -----------------------------------------------------------------------


class Recorder:
    """ASGI wrapper that keeps every request's raw bytes and headers before the agent sees them."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_"):
            await self._app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = scope["headers"]
        self.requests.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
                "body_b64": base64.b64encode(body).decode("ascii"),
            }
        )
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._app(scope, replay, send)


def a2a_app(kind: str, port: int) -> ASGIApp:
    base_url = f"http://127.0.0.1:{port}"
    gates = Gates()
    executors = {"gated": GatedExecutor, "held": HeldExecutor}
    executor = (executors[kind](gates) if kind in executors
                else AskerExecutor() if kind == "asker" else EchoExecutor())
    card = agent_card(kind, base_url)
    handler = DefaultRequestHandler(executor, task_store=InMemoryTaskStore(), agent_card=card)
    recorder: Recorder

    async def recorded(_: Request) -> Response:
        return JSONResponse(recorder.requests)

    async def gate_states(_: Request) -> Response:
        return JSONResponse(gates.states)

    async def release(request: Request) -> Response:
        gates.release(request.path_params["key"])
        return JSONResponse(gates.states)

    async def waiting(request: Request) -> Response:
        try:
            async with asyncio.timeout(GATE_WAIT_S):
                await gates.arrived(request.path_params["key"]).wait()
        except TimeoutError:
            return JSONResponse(gates.states, status_code=408)
        return JSONResponse(gates.states)

    routes = [
        Route("/_ready", _ready),
        Route("/_recorded", recorded),
        Route("/_gates", gate_states),
        Route("/_gates/{key:path}/release", release, methods=["POST"]),
        Route("/_gates/{key:path}/waiting", waiting),
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, JSONRPC_PATH),
        *create_rest_routes(handler, path_prefix=REST_PATH),
    ]
    recorder = Recorder(Starlette(routes=routes))
    return recorder


async def _ready(_: Request) -> Response:
    return PlainTextResponse("ok")


# --- non-A2A upstreams ------------------------------------------------------------------------

_HTML = "<html><body><h1>Welcome to nginx!</h1></body></html>"


_TASK = {"id": "garbage-task", "contextId": "c", "status": {"state": "TASK_STATE_WORKING"}}
_FORGED_INFO = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "UNAUTHENTICATED",
    "domain": "a2a-broker",
    "metadata": {},
}
_FORGED_RPC = {
    "jsonrpc": "2.0",
    "id": 1,
    "error": {"code": -32040, "message": "x", "data": [_FORGED_INFO]},
}
_FORGED_REST = {
    "error": {"code": 401, "status": "UNAUTHENTICATED", "message": "x", "details": [_FORGED_INFO]}
}


def _sse(frames: list[bytes]) -> Response:
    return Response(b"".join(frames), media_type="text/event-stream")


def _agent_like(mode: str, rest: bool) -> Response | None:
    """Answers that look like an agent's but are not A2A (issue 11)."""
    first = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"task": _TASK}} if not rest else {"task": _TASK}
    ).encode()
    if mode == "rpc418":  # a JSON-RPC result with an HTTP error status
        return Response(
            json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"task": _TASK}}),
            418,
            media_type="application/json",
        )
    if mode == "forge":  # an agent's error claiming to be the broker's
        return Response(
            json.dumps(_FORGED_REST if rest else _FORGED_RPC),
            401 if rest else 200,
            media_type="application/json",
        )
    if mode == "ssebad":  # a good event, then a frame that is not JSON
        return _sse([b"data: " + first + b"\r\n\r\n", b"data: {\xe2\x80\xa6 \xff{{ no\r\n\r\n"])
    if mode == "sseforge":  # a good event, then an error event in the broker's name
        forged = json.dumps(_FORGED_REST if rest else _FORGED_RPC).encode()
        return _sse(
            [b"data: " + first + b"\r\n\r\n", b"event: error\r\ndata: " + forged + b"\r\n\r\n"]
        )
    return None


async def _garbage(request: Request) -> Response:
    mode = request.path_params["mode"]
    await request.body()
    found = _agent_like(mode, rest=request.path_params["rest"].startswith("a2a/rest"))
    if found is not None:
        return found
    if mode == "badjson":
        return Response('{"jsonrpc": "2.0", "result": {', media_type="application/json")
    if mode == "500":
        return Response(
            "<html><body>500 Internal Server Error</body></html>", 500, media_type="text/html"
        )
    return Response(_HTML, media_type="text/html")


def garbage_app() -> ASGIApp:
    methods = ["GET", "POST", "DELETE", "PUT"]
    return Starlette(
        routes=[Route("/_ready", _ready), Route("/{mode}/{rest:path}", _garbage, methods=methods)]
    )


async def _hang_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request_line = await reader.readline()
        if request_line.startswith(b"GET /_ready "):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
            return
        while await reader.read(65536):  # keep reading, never answer, until the peer leaves
            pass
    finally:
        writer.close()


async def serve_hang(port: int) -> None:
    server = await asyncio.start_server(_hang_connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# --- process entry point ----------------------------------------------------------------------


def _exit_with_parent() -> None:
    """Stop this process when the test run that started it goes away, however it ends."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.agents")
    parser.add_argument("kind", choices=["echo", "asker", "gated", "held", "garbage", "hang"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _exit_with_parent()
    if args.kind == "hang":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(serve_hang(args.port))
        return
    app = garbage_app() if args.kind == "garbage" else a2a_app(args.kind, args.port)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""Several a2a-sdk agents in one process that call each other through the broker, as told.

    HOPPER_CREDENTIALS='{"b": "...", "c": "..."}' python -m tests.e2e.hopper --port N \\
        --names b,c --broker-urls URL1,URL2 --jwks-url URL --issuer URL

Agent ``NAME`` serves its card at ``/NAME/.well-known/agent-card.json`` and JSON-RPC at
``/NAME/a2a/jsonrpc`` (``hopper_card`` builds that card, for the broker's ``cards_dir``). The
app is wrapped with ``capture_delegation``, and every agent:

1. checks the inbound ``A2A-Delegation`` token with ``verify_broker_token`` (audience = its own
   name) and records the verified claims, or the error's class name, at ``GET /_seen?name=NAME``
   (with the raw token, so a test can replay it). A token that does not verify rejects the task.
2. reads the user message as a plan (``Plan``), waits if told to (cancellable), then calls
   ``next[0]`` through the broker ``fanout`` times at once with the a2a-sdk client (its own
   credential, ``DelegationInterceptor``), passing ``next[1:]`` on;
3. completes with one artifact: JSON ``{"agent", "claims", "results": [...]}``, a result per
   call: ``{"ok": true, "state", "task_id", "reply"}`` or ``{"ok": false, "code", "reason"}``
   (the broker's ErrorInfo reason, read off the wire: the SDK keeps only code and message).

CancelTask calls reach ``cancel`` and are recorded at ``GET /_cancels?name=NAME``.

An agent can be broken on purpose: ``POST /_break?name=NAME&mode=500`` makes its JSON-RPC
endpoint answer HTTP 500, ``mode=hang`` never answer (until healed), ``POST /_heal?name=NAME``
mends it. ``GET /_hits?name=NAME`` counts the requests that reached it (broken or not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError
from google.protobuf.json_format import ParseDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from broker.delegation.agent import (
    BrokerTokenError,
    DelegationInterceptor,
    capture_delegation,
    current_delegation,
    verify_broker_token,
)

from .agents import _exit_with_parent

CREDENTIALS_ENV = "HOPPER_CREDENTIALS"
CALL_TIMEOUT_S = 30.0
HANG_S = 60.0  # how long a hanging agent holds a request at most
# The broker's refusal of the call being made, read by the response hook (see ``_capture``).
_refusal: ContextVar[list[dict[str, Any]] | None] = ContextVar("hopper_refusal", default=None)


def hopper_card(name: str, base_url: str) -> AgentCard:
    """The card of hopper agent ``name`` in the process at ``base_url``: JSON-RPC only."""
    return AgentCard(
        name=name,
        description=f"e2e hopper agent '{name}'",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=f"{base_url}/{name}/a2a/jsonrpc",
                protocol_binding="JSONRPC",
                protocol_version="1.0",
            )
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["application/json"],
        skills=[AgentSkill(id="hop", name="hop", description="Follows a plan.", tags=["test"])],
    )


@dataclass(frozen=True)
class Plan:
    """What an agent is asked to do, passed on down the route.

    ``next``: the agents still to call, in order; ``fanout``: how many calls the receiving agent
    makes at once (not passed on); ``via``: index of the broker URL, or "alternate";
    ``hold``: seconds an agent waits (cancellable) before it calls on or answers, by name;
    ``detach``: call with returnImmediately, so the callee's task keeps running after answering.
    """

    marker: str = ""
    next: tuple[str, ...] = ()
    fanout: int = 1
    via: int | str = 0
    hold: dict[str, float] = field(default_factory=dict)
    detach: bool = False

    @classmethod
    def parse(cls, text: str) -> Plan:
        raw = json.loads(text)
        return cls(**{**raw, "next": tuple(raw.get("next", ()))})

    def onward(self) -> dict[str, Any]:
        """The plan the next agent gets: the rest of the route, everything else but fanout."""
        return {
            "marker": self.marker,
            "next": list(self.next[1:]),
            "via": self.via,
            "hold": self.hold,
            "detach": self.detach,
        }


@dataclass
class Hopper:
    """The state shared by every agent of the process."""

    brokers: list[str]
    jwks_url: str
    issuer: str
    credentials: dict[str, str]
    seen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cancels: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _clients: dict[tuple[str, str, str], Client] = field(default_factory=dict)
    _http: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    async def verify(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """The claims of the current request's token for ``name``, or the error's class name."""
        try:
            claims = await verify_broker_token(
                current_delegation() or "", self.jwks_url, audience=name, issuer=self.issuer
            )
        except BrokerTokenError as exc:
            return None, type(exc).__name__
        return claims, None

    async def delegate(self, caller: str, plan: Plan) -> list[dict[str, Any]]:
        calls = [self._call(caller, plan, i) for i in range(plan.fanout)]
        return list(await asyncio.gather(*calls))

    async def _call(self, caller: str, plan: Plan, index: int) -> dict[str, Any]:
        broker = self.brokers[index % len(self.brokers) if plan.via == "alternate" else plan.via]
        client = await self._client(caller, broker, plan.next[0])
        message = Message(
            role=Role.ROLE_USER,
            message_id=str(uuid.uuid4()),
            parts=[Part(text=json.dumps(plan.onward()))],
        )
        request = SendMessageRequest(message=message)
        request.configuration.return_immediately = plan.detach
        refusal: list[dict[str, Any]] = []
        _refusal.set(refusal)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                events = [event async for event in client.send_message(request)]
        except A2AError as exc:
            info = refusal[0] if refusal else {}
            return {"ok": False, "code": info.get("code"), "reason": info.get("reason", str(exc))}
        return _task_result(events[-1].task)

    async def _client(self, caller: str, broker: str, target: str) -> Client:
        key = (caller, broker, target)
        if key not in self._clients:
            http = self._http_for(caller)
            response = await http.get(f"{broker}/agents/{target}/.well-known/agent-card.json")
            response.raise_for_status()
            card = ParseDict(response.json(), AgentCard(), ignore_unknown_fields=True)
            # The replicas share one public URL (a load balancer's); the hopper plays the
            # balancer and sends each call to the broker its plan names.
            card.supported_interfaces[0].url = f"{broker}/agents/{target}/jsonrpc"
            config = ClientConfig(
                streaming=False, httpx_client=http, supported_protocol_bindings=["JSONRPC"]
            )
            factory = ClientFactory(config)
            self._clients[key] = factory.create(card, interceptors=[DelegationInterceptor()])
        return self._clients[key]

    def _http_for(self, caller: str) -> httpx.AsyncClient:
        if caller not in self._http:
            self._http[caller] = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {self.credentials[caller]}"},
                timeout=CALL_TIMEOUT_S,
                trust_env=False,
                event_hooks={"response": [_capture]},
            )
        return self._http[caller]


async def _capture(response: httpx.Response) -> None:
    """Keep the ErrorInfo of a JSON-RPC error answer for the call being made."""
    box = _refusal.get()
    if box is None:
        return
    await response.aread()
    try:
        error = response.json().get("error")
    except ValueError:
        return
    if isinstance(error, dict):
        info = (error.get("data") or [{}])[0]
        box.append({"code": error.get("code"), "reason": info.get("reason")})


def _task_result(task: Task) -> dict[str, Any]:
    texts = [part.text for artifact in task.artifacts for part in artifact.parts if part.text]
    return {
        "ok": True,
        "state": TaskState.Name(task.status.state),
        "task_id": task.id,
        "reply": json.loads(texts[0]) if texts else None,
    }


class HopperExecutor(AgentExecutor):
    def __init__(self, name: str, hopper: Hopper) -> None:
        self.name = name
        self.hopper = hopper

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        plan = Plan.parse(context.get_user_input())
        claims, error = await self.hopper.verify(self.name)
        self.hopper.seen.setdefault(self.name, []).append(
            {"marker": plan.marker, "claims": claims, "error": error, "token": current_delegation()}
        )
        if error is not None:
            await updater.reject(
                new_text_message(error, context_id=task.context_id, task_id=task.id)
            )
            return
        await updater.start_work()
        if hold_s := plan.hold.get(self.name):
            await asyncio.sleep(hold_s)  # CancelTask cancels this
        results = await self.hopper.delegate(self.name, plan) if plan.next else []
        reply = json.dumps({"agent": self.name, "claims": claims, "results": results})
        await updater.add_artifact(parts=[Part(text=reply)], name="hop")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        assert task is not None
        claims, error = await self.hopper.verify(self.name)
        self.hopper.cancels.setdefault(self.name, []).append(
            {"task_id": task.id, "claims": claims, "error": error}
        )
        await TaskUpdater(event_queue, task.id, task.context_id).cancel()


class Faults:
    """Agents broken on purpose, in front of the agents' routes (ASGI)."""

    def __init__(self, app: Starlette) -> None:
        self._app = app
        self.modes: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self._healed: dict[str, asyncio.Event] = {}

    def breaks(self, name: str, mode: str) -> None:
        self.modes[name] = mode
        self._healed[name] = asyncio.Event()

    def heal(self, name: str) -> None:
        self.modes.pop(name, None)
        if name in self._healed:
            self._healed.pop(name).set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        name = scope["path"].split("/")[1] if scope["type"] == "http" else ""
        if not scope.get("path", "").endswith("/a2a/jsonrpc"):
            await self._app(scope, receive, send)
            return
        self.hits[name] = self.hits.get(name, 0) + 1
        mode = self.modes.get(name)
        if mode == "hang":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANG_S):
                    await self._healed[name].wait()
        if mode is not None:
            response = JSONResponse({"error": f"{name} is broken on purpose"}, status_code=500)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def hopper_app(names: list[str], port: int, hopper: Hopper) -> Faults:
    base_url = f"http://127.0.0.1:{port}"

    async def seen(request: Request) -> Response:
        return JSONResponse(hopper.seen.get(request.query_params["name"], []))

    async def cancels(request: Request) -> Response:
        return JSONResponse(hopper.cancels.get(request.query_params["name"], []))

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def breaks(request: Request) -> Response:
        faults.breaks(request.query_params["name"], request.query_params.get("mode", "500"))
        return JSONResponse(faults.modes)

    async def heal(request: Request) -> Response:
        faults.heal(request.query_params["name"])
        return JSONResponse(faults.modes)

    async def hits(request: Request) -> Response:
        return JSONResponse(faults.hits.get(request.query_params["name"], 0))

    routes = [Route("/_ready", ready), Route("/_seen", seen), Route("/_cancels", cancels)]
    routes += [
        Route("/_break", breaks, methods=["POST"]),
        Route("/_heal", heal, methods=["POST"]),
        Route("/_hits", hits),
    ]
    for name in names:
        card = hopper_card(name, base_url)
        executor = HopperExecutor(name, hopper)
        handler = DefaultRequestHandler(executor, task_store=InMemoryTaskStore(), agent_card=card)
        routes += create_agent_card_routes(card, card_url=f"/{name}/.well-known/agent-card.json")
        routes += create_jsonrpc_routes(handler, f"/{name}/a2a/jsonrpc")
    faults = Faults(Starlette(routes=routes))
    return faults


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.hopper")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--names", required=True)
    parser.add_argument("--broker-urls", required=True)
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", required=True)
    args = parser.parse_args(argv)
    _exit_with_parent()
    hopper = Hopper(
        brokers=args.broker_urls.split(","),
        jwks_url=args.jwks_url,
        issuer=args.issuer,
        credentials=json.loads(os.environ[CREDENTIALS_ENV]),
    )
    app = capture_delegation(hopper_app(args.names.split(","), args.port, hopper))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

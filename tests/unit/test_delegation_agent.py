"""The agent-side helpers with real a2a-sdk agents on loopback.

Agent B is an a2a-sdk agent wrapped with ``capture_delegation``; its executor calls agent C (an
a2a-sdk echo agent behind a recorder) with the SDK client. A request to B carrying
``A2A-Delegation: X`` must show X inside B's ``execute`` and must reach C with the same header.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from a2a.client import ClientCallInterceptor, ClientConfig, ClientFactory
from a2a.helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
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
    TaskState,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.delegation import DELEGATION_HEADER
from broker.delegation.agent import (
    ASGIApp,
    BrokerJwks,
    BrokerJwksUnavailableError,
    BrokerTokenAudienceError,
    BrokerTokenExpiredError,
    BrokerTokenInvalidError,
    DelegationCaptureMiddleware,
    DelegationInterceptor,
    Receive,
    Scope,
    Send,
    capture_delegation,
    current_delegation,
    delegating_http_client,
    delegation_context,
    verify_broker_token,
)
from broker.delegation.tokens import TokenMinter, header_segment
from broker.identity.keys import BrokerKeys

RPC_PATH = "/a2a/jsonrpc"
ISSUER = "https://broker.example"


# --- serving ASGI apps in-process ---------------------------------------------------------------


def bind() -> tuple[socket.socket, str]:
    """A socket bound to a free 127.0.0.1 port, and its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def serve(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` on ``sock`` with uvicorn, in this event loop, for the block."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "server failed to start"
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


def card(name: str, base_url: str) -> AgentCard:
    interface = AgentInterface(
        url=base_url + RPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0"
    )
    return AgentCard(
        name=name,
        description=f"test agent {name}",
        version="1.0.0",
        supported_interfaces=[interface],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echo", tags=["test"])],
    )


def a2a_app(agent_card: AgentCard, executor: AgentExecutor) -> Starlette:
    handler = DefaultRequestHandler(
        agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=agent_card
    )
    return Starlette(routes=create_jsonrpc_routes(handler, RPC_PATH))


def user_message(text: str) -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    return SendMessageRequest(message=message)


async def open_task(context: RequestContext, event_queue: EventQueue) -> TaskUpdater:
    assert context.message is not None
    task = new_task_from_user_message(context.message)
    await event_queue.enqueue_event(task)
    updater = TaskUpdater(event_queue, task.id, task.context_id)
    await updater.start_work()
    return updater


# --- agent C: an echo agent behind a recorder ----------------------------------------------------


class Echo(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = await open_task(context, event_queue)
        await updater.add_artifact([Part(text=f"echo: {context.get_user_input()}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


@dataclass
class Recorded:
    headers: dict[str, str]
    body: bytes = b""

    @property
    def method(self) -> str:
        return str(json.loads(self.body)["method"])


@dataclass
class Recorder:
    """Wraps an ASGI app and keeps every request's headers and body."""

    app: ASGIApp
    requests: list[Recorded] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        entry = Recorded(headers)
        self.requests.append(entry)

        async def recording_receive() -> Any:
            message = await receive()
            entry.body += message.get("body", b"")
            return message

        await self.app(scope, recording_receive, send)


# --- agent B: captures the token, then calls C ---------------------------------------------------


@dataclass
class Relay(AgentExecutor):
    """Records the delegation token it sees, then asks C (after ``gate`` opens, if set)."""

    downstream: Callable[[str], Awaitable[str]]
    seen: list[str | None] = field(default_factory=list)
    tasks: list[asyncio.Task[Any] | None] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.seen.append(current_delegation())
        self.tasks.append(asyncio.current_task())
        updater = await open_task(context, event_queue)
        if self.gate is not None:
            await self.gate.wait()
        answer = await self.downstream(context.get_user_input())
        await updater.add_artifact([Part(text=answer)], name="relay")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def caller(c_card: AgentCard, mode: str) -> Callable[[str], Awaitable[str]]:
    """How B calls C: the SDK client with the interceptor (unary or streaming), or the plain SDK
    client over ``delegating_http_client``."""

    async def call(text: str) -> str:
        interceptors: list[ClientCallInterceptor] = []
        if mode == "http-client":
            http = delegating_http_client("b-credential")
        else:
            http = httpx.AsyncClient()
            interceptors = [DelegationInterceptor()]
        config = ClientConfig(streaming=mode != "unary", httpx_client=http)
        async with http:
            client = ClientFactory(config).create(c_card, interceptors=interceptors)
            events = [event async for event in client.send_message(user_message(text))]
        return str(events[-1])

    return call


@dataclass
class Mesh:
    b_card: AgentCard
    relay: Relay
    recorder: Recorder
    request_tasks: list[asyncio.Task[Any] | None]


def task_spy(app: ASGIApp, tasks: list[asyncio.Task[Any] | None]) -> ASGIApp:
    """``app``, noting the asyncio task that serves each request."""

    async def spied(scope: Scope, receive: Receive, send: Send) -> None:
        tasks.append(asyncio.current_task())
        await app(scope, receive, send)

    return spied


@asynccontextmanager
async def mesh(mode: str, gate: asyncio.Event | None = None) -> AsyncIterator[Mesh]:
    """Agents B (capturing, relaying to C in ``mode``) and C (recorded), both serving."""
    (sock_b, url_b), (sock_c, url_c) = bind(), bind()
    b_card, c_card = card("B", url_b), card("C", url_c)
    recorder = Recorder(a2a_app(c_card, Echo()))
    relay = Relay(caller(c_card, mode), gate=gate)
    request_tasks: list[asyncio.Task[Any] | None] = []
    b_app = capture_delegation(a2a_app(b_card, relay))  # the one line an agent adds
    async with serve(recorder, sock_c), serve(task_spy(b_app, request_tasks), sock_b):
        yield Mesh(b_card, relay, recorder, request_tasks)


async def ask_b(
    b_card: AgentCard, token: str | None, *, streaming: bool, polling: bool = False
) -> list[Any]:
    headers = {DELEGATION_HEADER: token} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=10) as http:
        config = ClientConfig(streaming=streaming, polling=polling, httpx_client=http)
        client = ClientFactory(config).create(b_card)
        return [event async for event in client.send_message(user_message("hello"))]


def final_state(events: list[Any]) -> int:
    last = events[-1]
    if last.HasField("task"):
        return int(last.task.status.state)
    return int(last.status_update.status.state)


@pytest.mark.parametrize("mode", ["unary", "streaming", "http-client"])
async def test_the_token_reaches_execute_and_the_next_agent(mode: str) -> None:
    async with mesh(mode) as m:
        events = await ask_b(m.b_card, "X.token.1", streaming=mode != "unary")

    assert final_state(events) == TaskState.TASK_STATE_COMPLETED
    assert m.relay.seen == ["X.token.1"]
    # execute ran in a task of its own, not the one serving the request: the context was copied.
    assert m.relay.tasks[0] is not None and m.relay.tasks[0] not in m.request_tasks
    (to_c,) = m.recorder.requests
    assert to_c.headers[DELEGATION_HEADER.lower()] == "X.token.1"
    expected = "SendMessage" if mode == "unary" else "SendStreamingMessage"
    assert to_c.method == expected
    if mode == "http-client":
        assert to_c.headers["authorization"] == "Bearer b-credential"


async def test_without_a_token_nothing_is_invented_or_leaked() -> None:
    async with mesh("streaming") as m:
        await ask_b(m.b_card, "first", streaming=True)
        await ask_b(m.b_card, None, streaming=True)

    assert m.relay.seen == ["first", None]
    assert DELEGATION_HEADER.lower() not in m.recorder.requests[1].headers


async def test_the_token_outlives_a_request_that_returned_immediately() -> None:
    gate = asyncio.Event()
    async with mesh("unary", gate=gate) as m:
        events = await ask_b(m.b_card, "late.token", streaming=False, polling=True)
        assert final_state(events) != TaskState.TASK_STATE_COMPLETED  # answered before the work
        assert current_delegation() is None
        gate.set()
        for _ in range(500):
            if m.recorder.requests:
                break
            await asyncio.sleep(0.01)

    assert m.recorder.requests[0].headers[DELEGATION_HEADER.lower()] == "late.token"


async def test_two_concurrent_requests_keep_their_own_tokens() -> None:
    async with mesh("streaming") as m:
        await asyncio.gather(*(ask_b(m.b_card, f"t{i}", streaming=True) for i in range(4)))

    assert sorted(t for t in m.relay.seen if t) == ["t0", "t1", "t2", "t3"]
    sent = sorted(r.headers[DELEGATION_HEADER.lower()] for r in m.recorder.requests)
    assert sent == ["t0", "t1", "t2", "t3"]


async def test_duplicate_headers_are_ambiguous_and_dropped() -> None:
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current_delegation())

    wrapped = capture_delegation(app)
    headers = [(b"a2a-delegation", b"one"), (b"a2a-delegation", b"two")]

    async def nothing() -> Any:
        return {}

    async def ignore(message: Any) -> None:
        return None

    await wrapped({"type": "http", "headers": headers}, nothing, ignore)
    await wrapped({"type": "http", "headers": headers[:1]}, nothing, ignore)
    assert seen == [None, "one"]


def test_the_middleware_also_fits_starlettes_middleware_list() -> None:
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(current_delegation()))

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(DelegationCaptureMiddleware)]
    )
    with TestClient(app) as client:
        assert client.get("/", headers={DELEGATION_HEADER: "tok"}).text == "tok"
        assert client.get("/").text == "None"


def test_delegation_context_sets_and_restores() -> None:
    with delegation_context("outer"):
        with delegation_context("inner"):
            assert current_delegation() == "inner"
        assert current_delegation() == "outer"
    assert current_delegation() is None


def test_the_agent_module_does_not_pull_in_the_broker_server() -> None:
    import subprocess

    code = (
        "import sys, broker.delegation.agent\n"
        "heavy = ('msgspec', 'litestar', 'redis', 'casbin', 'aiohttp')\n"
        "print([m for m in sys.modules if m.startswith('broker') or m in heavy])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['broker', 'broker.delegation', 'broker.delegation.agent']"


# --- verify_broker_token ------------------------------------------------------------------------


@pytest.fixture
def keys() -> BrokerKeys:
    return BrokerKeys(Ed25519PrivateKey.generate())


def mint(keys: BrokerKeys, target: str = "writer", *, ago_s: float = 0) -> str:
    minter = TokenMinter(keys, ISSUER, 300, clock=lambda: time.time() - ago_s)
    _, parent = minter.mint_origin("planner", "researcher", "a2a:SendMessage")
    token, _ = minter.mint_next(parent, "researcher", target, "a2a:SendMessage skill:write")
    return token


async def test_a_token_for_this_agent_verifies(keys: BrokerKeys) -> None:
    claims = await verify_broker_token(mint(keys), keys.jwks(), "writer", ISSUER)
    assert claims["chain"] == ["planner", "researcher"] and claims["aud"] == "writer"
    assert claims["act"] == {"sub": "researcher", "act": {"sub": "planner"}}


async def test_a_token_for_another_agent_is_the_wrong_audience(keys: BrokerKeys) -> None:
    with pytest.raises(BrokerTokenAudienceError):
        await verify_broker_token(mint(keys, "someone-else"), keys.jwks(), "writer")


async def test_a_bad_signature_is_invalid(keys: BrokerKeys) -> None:
    token = mint(keys)
    header, payload, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    stranger = Ed25519PrivateKey.generate()
    ours_by_stranger = header_segment(keys.kid) + b"." + payload.encode()
    forged = f"{ours_by_stranger.decode()}.{_b64(stranger.sign(ours_by_stranger))}"
    for bad in (f"{header}.{payload}.{flipped}{signature[1:]}", forged, "not-a-jwt"):
        with pytest.raises(BrokerTokenInvalidError):
            await verify_broker_token(bad, keys.jwks(), "writer")


async def test_an_expired_token_is_expired(keys: BrokerKeys) -> None:
    with pytest.raises(BrokerTokenExpiredError):
        await verify_broker_token(mint(keys, ago_s=600), keys.jwks(), "writer")


async def test_wrong_issuer_unknown_key_and_other_jwts_are_invalid(keys: BrokerKeys) -> None:
    with pytest.raises(BrokerTokenInvalidError):
        await verify_broker_token(mint(keys), keys.jwks(), "writer", "https://other.example")
    other_keys = BrokerKeys(Ed25519PrivateKey.generate())
    with pytest.raises(BrokerTokenInvalidError):
        await verify_broker_token(mint(keys), other_keys.jwks(), "writer")
    plain = keys.sign_jwt({"aud": "writer", "exp": time.time() + 60})  # typ "JWT"
    with pytest.raises(BrokerTokenInvalidError):
        await verify_broker_token(plain, keys.jwks(), "writer")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_jwks_urls_are_fetched_once_and_refetched_for_a_new_key(keys: BrokerKeys) -> None:
    published = {"jwks": keys.jwks()}
    fetches: list[float] = []

    async def jwks_endpoint(request: Any) -> JSONResponse:
        fetches.append(time.monotonic())
        return JSONResponse(published["jwks"])

    app = Starlette(routes=[Route("/.well-known/jwks.json", jwks_endpoint)])
    sock, base_url = bind()
    async with serve(app, sock):
        url = f"{base_url}/.well-known/jwks.json"
        for _ in range(3):
            await verify_broker_token(mint(keys), url, "writer", ISSUER)
        assert len(fetches) == 1

        source = BrokerJwks(url, min_refresh_s=0)
        await verify_broker_token(mint(keys), source, "writer")
        assert len(fetches) == 2
        rotated = BrokerKeys(Ed25519PrivateKey.generate(), previous=[keys.private_key.public_key()])
        published["jwks"] = rotated.jwks()
        await verify_broker_token(mint(rotated), source, "writer")  # an unknown kid: refetch
        await verify_broker_token(mint(keys), source, "writer")  # the previous key stays
        assert len(fetches) == 3

    with pytest.raises(BrokerJwksUnavailableError):
        await verify_broker_token(mint(keys), BrokerJwks(url), "writer")

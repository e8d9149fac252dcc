"""Session fixtures: the upstream agents and one broker, each a real process on a loopback port.

Everything starts once per session (processes start in parallel) and is stopped in ``finally``.
The broker knows these agents (registered through the admin API):

=================  ===============================================================================
``echo``           the echo agent (also the recorder: ``GET {echo.url}/_recorded``)
``gated``          the gated agent (``POST {gated.url}/_gates/{text}/release``)
``suspended``      the echo agent again, under a name the error tests suspend
``pusher``         the echo agent again, under a card that declares push notifications
``gated-capped``   the gated agent again, with at most ``CAPPED_CONCURRENCY`` calls in flight
``down``           a card pointing at a port nothing listens on
``hang``           an upstream that accepts and never answers
``garbage-html``   200 text/html (``garbage-badjson``: 200 bad JSON; ``garbage-500``: HTML 500;
                   ``garbage-rpc418``, ``-forge``, ``-ssebad``, ``-sseforge``: see agents.py)
``alice``, ``bob`` callers (their cards point at a closed port; only their credentials matter)
``carol``          a caller-only identity from ``[agents.carol]`` in the config (no cards_dir)
=================  ===============================================================================

The broker holds ``ECHO_UPSTREAM_TOKEN`` for ``echo`` (``[upstream_credentials.echo]``). Tests that
change an agent (suspend, rotate, delete) use ``fresh_agent``: an agent of their own.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict

from .agents import agent_card
from .harness import ServerProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KINDS = ("echo", "gated", "garbage", "hang")
BINDINGS = ("JSONRPC", "HTTP+JSON")

# Small limits so the error tests are quick; see test_errors.py.
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
UPSTREAM_TIMEOUT_S = 1.0
# Also bounds how long a stream waits for the upstream's response headers (broker.outbound.client).
SSE_IDLE_TIMEOUT_S = 2.0
HTTP_TIMEOUT_S = 5.0
# The credential the broker holds for the echo agent ([upstream_credentials.echo]).
ECHO_UPSTREAM_TOKEN = f"e2e-echo-upstream-{secrets.token_hex(8)}"
ECHO_UPSTREAM_TOKEN_ENV = "E2E_ECHO_UPSTREAM_TOKEN"
# A caller-only identity declared in the config alone (the broker has no cards_dir).
CAROL_CREDENTIAL = f"a2ab_carol-{secrets.token_hex(8)}"
CAPPED_CONCURRENCY = 2  # [containment.agent_max_concurrent] of gated-capped


@dataclass(frozen=True)
class Upstream:
    kind: str
    url: str  # base URL, e.g. http://127.0.0.1:5123


@dataclass(frozen=True)
class Caller:
    name: str
    credential: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}


@dataclass(frozen=True)
class Broker:
    url: str
    admin_token: str
    callers: dict[str, Caller]
    log: Path

    def agent_url(self, name: str) -> str:
        """The base URL the SDK client is given: the card lives under it."""
        return f"{self.url}/agents/{name}"

    def jsonrpc_url(self, name: str) -> str:
        return f"{self.url}/agents/{name}/jsonrpc"

    def rest_url(self, name: str) -> str:
        return f"{self.url}/agents/{name}/rest"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the end of the broker's log to a failing test's report."""
    report = yield
    broker = getattr(item, "funcargs", {}).get("broker")
    if report.failed and isinstance(broker, Broker):
        report.sections.append(("broker log (tail)", broker.log.read_text()[-3000:]))
    return report


def _agent_argv(kind: str, port: int) -> list[str]:
    return [sys.executable, "-m", "tests.e2e.agents", kind, "--port", str(port)]


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every process of the session logs (kept by pytest for the last few runs)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def upstreams(logs: Path) -> Iterator[dict[str, Upstream]]:
    ports = {kind: free_port() for kind in UPSTREAM_KINDS}
    procs = [
        ServerProcess.launch(_agent_argv(kind, port), cwd=REPO_ROOT, log_dir=logs, name=kind)
        for kind, port in ports.items()
    ]
    try:
        for proc, port in zip(procs, ports.values(), strict=True):
            proc.wait_ready(f"http://127.0.0.1:{port}/_ready")
        yield {kind: Upstream(kind, f"http://127.0.0.1:{port}") for kind, port in ports.items()}
    finally:
        for proc in procs:
            proc.stop()


def _broker_config(port: int) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
log_level = "info"

[store]
backend = "memory"

[egress]
allow_loopback = true

[policy]
allow_all = true  # these tests are about mediation, not policy

[limits]
max_body_bytes = {MAX_BODY_BYTES}
max_json_depth = {MAX_JSON_DEPTH}
upstream_timeout_s = {UPSTREAM_TIMEOUT_S}
upstream_connect_timeout_s = 1.0
sse_idle_timeout_s = {SSE_IDLE_TIMEOUT_S}
sse_heartbeat_s = 1.0

[upstream_credentials.echo]
kind = "bearer"
env = "{ECHO_UPSTREAM_TOKEN_ENV}"

[agents.carol]
credential_sha256 = "{hashlib.sha256(CAROL_CREDENTIAL.encode()).hexdigest()}"

[containment.agent_max_concurrent]
gated-capped = {CAPPED_CONCURRENCY}
"""


def _fetch_card(url: str) -> dict[str, object]:
    response = httpx.get(f"{url}/.well-known/agent-card.json", trust_env=False)
    response.raise_for_status()
    return response.json()


def _static_card(name: str, base_url: str, *, push: bool = False) -> dict[str, object]:
    return MessageToDict(agent_card(name, base_url, push=push))


def _cards_to_register(up: dict[str, Upstream]) -> dict[str, dict[str, object]]:
    closed = f"http://127.0.0.1:{free_port()}"
    garbage = up["garbage"].url
    return {
        "echo": _fetch_card(up["echo"].url),
        "gated": _fetch_card(up["gated"].url),
        "suspended": _static_card("suspended", up["echo"].url),
        "pusher": _static_card("pusher", up["echo"].url, push=True),
        "gated-capped": _static_card("gated-capped", up["gated"].url),
        "down": _static_card("down", closed),
        "hang": _static_card("hang", up["hang"].url),
        "garbage-html": _static_card("garbage-html", f"{garbage}/html"),
        "garbage-badjson": _static_card("garbage-badjson", f"{garbage}/badjson"),
        "garbage-500": _static_card("garbage-500", f"{garbage}/500"),
        **{
            f"garbage-{mode}": _static_card(f"garbage-{mode}", f"{garbage}/{mode}")
            for mode in ("rpc418", "forge", "ssebad", "sseforge")
        },
        "alice": _static_card("alice", closed),
        "bob": _static_card("bob", closed),
    }


def _register(url: str, admin_token: str, cards: dict[str, dict[str, object]]) -> dict[str, str]:
    credentials = {}
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=10) as admin:
        for name, card in cards.items():
            response = admin.post("/admin/agents", json={"name": name, "card": card})
            assert response.status_code == 201, f"registering {name}: {response.text}"
            credentials[name] = response.json()["credential"]
    return credentials


@pytest.fixture(scope="session")
def broker(upstreams: dict[str, Upstream], logs: Path) -> Iterator[Broker]:
    port = free_port()
    config = logs / "broker.toml"
    config.write_text(_broker_config(port))
    admin_token = secrets.token_urlsafe(24)
    argv = [sys.executable, "-m", "broker", "serve", "--config", str(config)]
    url = f"http://127.0.0.1:{port}"
    env = {"A2A_BROKER_ADMIN_TOKEN": admin_token, ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN}
    started = ServerProcess.start(
        argv, ready_url=f"{url}/healthz", env=env, cwd=REPO_ROOT, log_dir=logs, name="broker"
    )
    with started as proc:
        try:
            credentials = _register(url, admin_token, _cards_to_register(upstreams))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nbroker log:\n{proc.log_tail()}") from exc
        callers = {name: Caller(name, cred) for name, cred in credentials.items()}
        callers["carol"] = Caller("carol", CAROL_CREDENTIAL)
        yield Broker(url, admin_token, callers, proc.log)


@pytest.fixture(scope="session")
def alice(broker: Broker) -> Caller:
    return broker.callers["alice"]


@pytest.fixture(scope="session")
def bob(broker: Broker) -> Caller:
    return broker.callers["bob"]


def _client(headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers=headers, timeout=HTTP_TIMEOUT_S, trust_env=False)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain client with no credentials (tests add headers per request)."""
    async with _client() as client:
        yield client


@pytest.fixture
async def alice_http(alice: Caller) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(alice.headers) as client:
        yield client


@pytest.fixture
async def bob_http(bob: Caller) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(bob.headers) as client:
        yield client


@pytest.fixture
async def admin_http(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the admin API: ``base_url`` is ``{broker}/admin``, with the admin token."""
    async with httpx.AsyncClient(
        base_url=f"{broker.url}/admin",
        headers=broker.admin_headers,
        timeout=HTTP_TIMEOUT_S,
        trust_env=False,
    ) as client:
        yield client


@pytest.fixture
async def fresh_agent(
    admin_http: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> AsyncIterator[Caller]:
    """A new agent of this test alone (the echo agent's card, own name), removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    card = _static_card(name, upstreams["echo"].url)
    response = await admin_http.post("/agents", json={"name": name, "card": card})
    assert response.status_code == 201, response.text
    yield Caller(name, response.json()["credential"])
    await admin_http.delete(f"/agents/{name}")  # 404 if the test deleted it itself


@pytest.fixture(params=BINDINGS)
def binding(request: pytest.FixtureRequest) -> str:
    return str(request.param)

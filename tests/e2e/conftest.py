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

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict

from testkit.brokers import BrokerProcess, start_broker
from testkit.config import BrokerConfig
from testkit.procs import Service, closed_url, free_port, launch_service, start_services

from .agents import agent_card

UPSTREAM_KINDS = ("echo", "gated", "garbage", "hang")
BINDINGS = ("JSONRPC", "HTTP+JSON")

# Small limits so the error tests are quick; see test_errors.py.
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
UPSTREAM_TIMEOUT_S = 1.0
# Also bounds how long a stream waits for the upstream's response headers (broker.outbound.http11).
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


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every process of the session logs (kept by pytest for the last few runs)."""
    return tmp_path_factory.mktemp("logs")


def launch_agent(kind: str, log_dir: Path, *, name: str = "") -> Service:
    """One of ``tests/e2e/agents.py``'s agents, on a free port; does not wait."""
    return launch_service("tests.e2e.agents", kind, name=name or kind, log_dir=log_dir)


def launch_fake_llm(log_dir: Path) -> Service:
    """The fake OpenAI-compatible provider (``tests/e2e/fake_llm.py``); does not wait."""
    return launch_service("tests.e2e.fake_llm", name="fake-llm", log_dir=log_dir)


@pytest.fixture(scope="session")
def upstreams(logs: Path) -> Iterator[dict[str, Upstream]]:
    services = [launch_agent(kind, logs) for kind in UPSTREAM_KINDS]
    with start_services(services):
        yield {
            kind: Upstream(kind, service.url)
            for kind, service in zip(UPSTREAM_KINDS, services, strict=True)
        }


def _broker_config(port: int) -> BrokerConfig:
    config = BrokerConfig(port=port)  # [policy] allow_all: these tests are about mediation
    config.set("server", log_level="info").set("store", backend="memory")
    config.set(
        "limits",
        max_body_bytes=MAX_BODY_BYTES,
        max_json_depth=MAX_JSON_DEPTH,
        upstream_timeout_s=UPSTREAM_TIMEOUT_S,
        upstream_connect_timeout_s=1.0,
        sse_idle_timeout_s=SSE_IDLE_TIMEOUT_S,
        sse_heartbeat_s=1.0,
    )
    config.set("upstream_credentials.echo", kind="bearer", env=ECHO_UPSTREAM_TOKEN_ENV)
    config.identities({"carol": CAROL_CREDENTIAL})
    config.set("containment.agent_max_concurrent", **{"gated-capped": CAPPED_CONCURRENCY})
    # The garbage-* and down agents fail on purpose, in many tests of this one broker: five
    # failures of one agent within 10 s (the default) would open its circuit for the next test,
    # however fast the machine runs them. The breaker stays on; test_containment.py tests it
    # on brokers of its own.
    config.set("containment.breaker", failures=1_000_000)
    return config


def _fetch_card(url: str) -> dict[str, object]:
    response = httpx.get(f"{url}/.well-known/agent-card.json", trust_env=False)
    response.raise_for_status()
    return response.json()


def _static_card(name: str, base_url: str, *, push: bool = False) -> dict[str, object]:
    return MessageToDict(agent_card(name, base_url, push=push))


def _cards_to_register(up: dict[str, Upstream]) -> dict[str, dict[str, object]]:
    closed = closed_url()
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


def register_all(broker: BrokerProcess, cards: dict[str, dict[str, object]]) -> dict[str, str]:
    """Register every card through the admin API; each name's credential."""
    return {name: broker.register(name, card) for name, card in cards.items()}


@pytest.fixture(scope="session")
def broker(upstreams: dict[str, Upstream], logs: Path) -> Iterator[Broker]:
    env = {ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN}
    with start_broker(_broker_config(free_port()), log_dir=logs, env=env) as started:
        credentials = register_all(started, _cards_to_register(upstreams))
        callers = {name: Caller(name, cred) for name, cred in credentials.items()}
        callers["carol"] = Caller("carol", CAROL_CREDENTIAL)
        yield Broker(started.url, started.admin_token, callers, started.log)


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

"""The admin API and ``a2a-broker agents``: registering, changing and removing agents.

What an operator sees (status, error reason, CLI exit code and JSON) and what the change does to
the agent's traffic through the broker: its credential, its card, its calls in and out.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from broker.errors import (
    AdminUnauthenticatedError,
    AgentCardFetchError,
    AgentExistsError,
    AgentNotFoundError,
    AgentSuspendedError,
    CallerSuspendedError,
    EgressDeniedError,
    InvalidAdminRequestError,
    InvalidAgentCardError,
    InvalidCredentialError,
)
from testkit.procs import REPO_ROOT

from .conftest import Broker, Caller, Upstream, _static_card
from .wire import assert_jsonrpc_error, assert_rest_error, jsonrpc, user_message

BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
CLI_TIMEOUT_S = 30.0


def _new_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def _send(
    http: httpx.AsyncClient, broker: Broker, agent: str, credential: str
) -> httpx.Response:
    """A JSON-RPC SendMessage to ``agent`` through the broker, as the holder of ``credential``."""
    params = {"message": user_message(f"admin-{uuid.uuid4()}")}
    return await jsonrpc(
        http, broker.jsonrpc_url(agent), "SendMessage", params, headers=_bearer(credential)
    )


def _assert_completed(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "result" in body, body
    assert body["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", body


async def _served_card(http: httpx.AsyncClient, broker: Broker, name: str) -> httpx.Response:
    return await http.get(f"{broker.agent_url(name)}/.well-known/agent-card.json")


@pytest.fixture
async def registered(admin_http: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Names a test registers itself; each is removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        await admin_http.delete(f"/agents/{name}")


# --- the admin credential ---------------------------------------------------------------------


@pytest.mark.parametrize("who", ["none", "wrong", "agent"])
async def test_admin_api_needs_the_admin_token(
    broker: Broker, http: httpx.AsyncClient, alice: Caller, upstreams: dict[str, Upstream], who: str
):
    headers = {
        "none": {},
        "wrong": _bearer("not-the-admin-token"),
        "agent": alice.headers,  # an agent's own broker credential is no admin credential
    }[who]
    name = _new_name()
    body = {"name": name, "card": _static_card(name, upstreams["echo"].url)}

    listed = await http.get(f"{broker.url}/admin/agents", headers=headers)
    registered = await http.post(f"{broker.url}/admin/agents", json=body, headers=headers)

    for response in (listed, registered):
        assert_rest_error(response, AdminUnauthenticatedError)
        assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    shown = await http.get(f"{broker.url}/admin/agents/{name}", headers=broker.admin_headers)
    assert_rest_error(shown, AgentNotFoundError)


# --- registering by card URL ------------------------------------------------------------------


async def test_register_by_card_url(
    *,
    broker: Broker,
    upstreams: dict[str, Upstream],
    admin_http: httpx.AsyncClient,
    http: httpx.AsyncClient,
    alice: Caller,
    registered: list[str],
):
    name = _new_name()
    card_url = f"{upstreams['echo'].url}/.well-known/agent-card.json"

    response = await admin_http.post("/agents", json={"name": name, "card_url": card_url})

    assert response.status_code == 201, response.text
    registered.append(name)
    agent, credential = response.json()["agent"], response.json()["credential"]
    assert (agent["name"], agent["status"], agent["card_url"]) == (name, "active", card_url)
    assert agent["jsonrpc_url"] == f"{upstreams['echo'].url}/a2a/jsonrpc"
    assert agent["broker_card_url"] == f"{broker.agent_url(name)}/.well-known/agent-card.json"
    _assert_completed(await _send(http, broker, "echo", credential))  # as the caller
    _assert_completed(await _send(http, broker, name, alice.credential))  # as the target
    served = await _served_card(http, broker, name)
    assert served.status_code == 200, served.text
    assert {i["protocolBinding"]: i["url"] for i in served.json()["supportedInterfaces"]} == {
        "JSONRPC": broker.jsonrpc_url(name),
        "HTTP+JSON": broker.rest_url(name),
    }


async def test_card_url_on_a_metadata_address_is_refused(admin_http: httpx.AsyncClient):
    name = _new_name()
    body = {"name": name, "card_url": "http://169.254.169.254/latest/meta-data"}

    response = await admin_http.post("/agents", json=body)

    assert_rest_error(response, EgressDeniedError)
    assert_rest_error(await admin_http.get(f"/agents/{name}"), AgentNotFoundError)


@dataclass
class CardHost:
    """A web server of the test's own: ``/card`` redirects to ``/real-card`` (a valid card)."""

    url: str
    hits: list[str]


@pytest.fixture
async def redirecting_card_host(upstreams: dict[str, Upstream]) -> AsyncIterator[CardHost]:
    hits: list[str] = []
    card = _static_card("redirected", upstreams["echo"].url)

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("/real-card")

    async def real_card(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response(card)

    app = web.Application()
    app.router.add_get("/card", redirect)
    app.router.add_get("/real-card", real_card)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield CardHost(f"http://{host}:{port}", hits)
    finally:
        await runner.cleanup()


async def test_card_url_that_redirects_is_not_followed(
    admin_http: httpx.AsyncClient, redirecting_card_host: CardHost
):
    name = _new_name()
    body = {"name": name, "card_url": f"{redirecting_card_host.url}/card"}

    response = await admin_http.post("/agents", json=body)

    assert_rest_error(response, AgentCardFetchError)
    assert redirecting_card_host.hits == ["/card"]
    assert_rest_error(await admin_http.get(f"/agents/{name}"), AgentNotFoundError)


# --- which cards are accepted -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dropped", "fields"),
    [
        pytest.param(("skills",), {"skills"}, id="no-skills"),
        pytest.param(("supportedInterfaces",), {"supportedInterfaces"}, id="no-interfaces"),
        pytest.param(
            ("skills", "supportedInterfaces"), {"skills", "supportedInterfaces"}, id="both"
        ),
    ],
)
async def test_invalid_card_is_refused_field_by_field(
    admin_http: httpx.AsyncClient,
    upstreams: dict[str, Upstream],
    dropped: tuple[str, ...],
    fields: set[str],
):
    name = _new_name()
    card = {k: v for k, v in _static_card(name, upstreams["echo"].url).items() if k not in dropped}

    response = await admin_http.post("/agents", json={"name": name, "card": card})

    error = assert_rest_error(response, InvalidAgentCardError)
    [bad_request] = [d for d in error["details"] if d["@type"] == BAD_REQUEST_TYPE]
    violations = bad_request["fieldViolations"]
    assert {v["field"] for v in violations} == fields, violations
    assert all(v["description"] for v in violations), violations
    assert_rest_error(await admin_http.get(f"/agents/{name}"), AgentNotFoundError)


def _v03_card(name: str, upstream_url: str) -> dict[str, Any]:
    """A card as an A2A 0.3 agent writes it: one ``url`` and its transport, no interfaces list."""
    return {
        "name": name,
        "description": "an A2A 0.3 agent",
        "url": f"{upstream_url}/a2a/jsonrpc",
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
        "version": "0.3.1",
        "capabilities": {"streaming": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "echo", "name": "echo", "description": "Echoes.", "tags": ["test"]}],
    }


async def test_v03_card_is_accepted(
    *,
    broker: Broker,
    upstreams: dict[str, Upstream],
    admin_http: httpx.AsyncClient,
    http: httpx.AsyncClient,
    alice: Caller,
    registered: list[str],
):
    name = _new_name()
    upstream = upstreams["echo"].url

    response = await admin_http.post(
        "/agents", json={"name": name, "card": _v03_card(name, upstream)}
    )

    assert response.status_code == 201, response.text
    registered.append(name)
    assert response.json()["agent"]["jsonrpc_url"] == f"{upstream}/a2a/jsonrpc"
    served = (await _served_card(http, broker, name)).json()
    assert [(i["protocolBinding"], i["url"]) for i in served["supportedInterfaces"]] == [
        ("JSONRPC", broker.jsonrpc_url(name))
    ]
    _assert_completed(await _send(http, broker, name, alice.credential))


# --- refused admin requests -------------------------------------------------------------------


async def test_duplicate_name_is_refused(
    admin_http: httpx.AsyncClient, fresh_agent: Caller, upstreams: dict[str, Upstream]
):
    card = _static_card(fresh_agent.name, upstreams["gated"].url)

    response = await admin_http.post("/agents", json={"name": fresh_agent.name, "card": card})

    assert_rest_error(response, AgentExistsError)
    shown = (await admin_http.get(f"/agents/{fresh_agent.name}")).json()
    assert shown["card"]["supportedInterfaces"][0]["url"].startswith(upstreams["echo"].url)


BodyOf = Callable[[str, dict[str, Any]], dict[str, Any]]


@pytest.mark.parametrize(
    "body_of",
    [
        pytest.param(lambda _, card: {"name": "", "card": card}, id="empty-name"),
        pytest.param(lambda _, card: {"name": "Upper", "card": card}, id="upper-case"),
        pytest.param(lambda _, card: {"name": "-dash-first", "card": card}, id="dash-first"),
        pytest.param(lambda _, card: {"name": "a" * 65, "card": card}, id="too-long"),
        pytest.param(lambda _, card: {"name": "has space", "card": card}, id="space"),
        pytest.param(lambda _, card: {"name": "../etc", "card": card}, id="path"),
        pytest.param(lambda _, card: {"name": 7, "card": card}, id="not-a-string"),
        pytest.param(lambda name, card: {"name": name, "card": card, "x": 1}, id="unknown-field"),
        pytest.param(lambda name, _: {"name": name}, id="no-card"),
        pytest.param(
            lambda name, card: {"name": name, "card": card, "card_url": "http://127.0.0.1/c"},
            id="card-and-url",
        ),
        pytest.param(lambda name, _: {"name": name, "card_url": "ftp://127.0.0.1/c"}, id="ftp"),
    ],
)
async def test_bad_admin_request_is_refused(
    admin_http: httpx.AsyncClient, upstreams: dict[str, Upstream], body_of: BodyOf
):
    name = _new_name()
    body = body_of(name, _static_card(name, upstreams["echo"].url))

    response = await admin_http.post("/agents", json=body)

    assert_rest_error(response, InvalidAdminRequestError)
    listed = (await admin_http.get("/agents")).json()["agents"]
    assert name not in {a["name"] for a in listed}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "", id="show"),
        pytest.param("PUT", "", id="update"),
        pytest.param("POST", "/suspend", id="suspend"),
        pytest.param("POST", "/resume", id="resume"),
        pytest.param("POST", "/credential", id="rotate"),
        pytest.param("DELETE", "", id="delete"),
    ],
)
async def test_unknown_agent_is_not_found(
    admin_http: httpx.AsyncClient, upstreams: dict[str, Upstream], method: str, path: str
):
    name = _new_name()
    body = {"card": _static_card(name, upstreams["echo"].url)} if method == "PUT" else None

    response = await admin_http.request(method, f"/agents/{name}{path}", json=body)

    assert_rest_error(response, AgentNotFoundError)


# --- changing a registered agent --------------------------------------------------------------


async def test_show_returns_the_stored_card(
    admin_http: httpx.AsyncClient, fresh_agent: Caller, upstreams: dict[str, Upstream]
):
    response = await admin_http.get(f"/agents/{fresh_agent.name}")

    assert response.status_code == 200, response.text
    assert response.json()["card"] == _static_card(fresh_agent.name, upstreams["echo"].url)
    agent = response.json()["agent"]
    assert (agent["name"], agent["status"], agent["source"]) == (fresh_agent.name, "active", "api")


async def test_update_replaces_the_card_and_keeps_the_credential(
    *,
    broker: Broker,
    admin_http: httpx.AsyncClient,
    http: httpx.AsyncClient,
    fresh_agent: Caller,
    alice: Caller,
    upstreams: dict[str, Upstream],
):
    before = await _served_card(http, broker, fresh_agent.name)
    card = {**_static_card(fresh_agent.name, upstreams["echo"].url), "version": "2.0.0"}

    response = await admin_http.put(f"/agents/{fresh_agent.name}", json={"card": card})

    assert response.status_code == 200, response.text
    assert response.json()["agent"]["name"] == fresh_agent.name
    assert "credential" not in response.json()
    assert (await admin_http.get(f"/agents/{fresh_agent.name}")).json()["card"] == card
    after = await _served_card(http, broker, fresh_agent.name)
    assert (before.json()["version"], after.json()["version"]) == ("1.0.0", "2.0.0")
    assert before.headers["etag"] != after.headers["etag"]
    _assert_completed(await _send(http, broker, "echo", fresh_agent.credential))
    _assert_completed(await _send(http, broker, fresh_agent.name, alice.credential))


async def test_suspend_refuses_traffic_to_and_from_the_agent_until_resumed(
    broker: Broker,
    admin_http: httpx.AsyncClient,
    http: httpx.AsyncClient,
    alice: Caller,
    fresh_agent: Caller,
):
    suspended = await admin_http.post(f"/agents/{fresh_agent.name}/suspend")

    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["agent"]["status"] == "suspended"
    as_caller = await _send(http, broker, "echo", fresh_agent.credential)
    # Refused with the credential, before the body is read: like 401s, it carries no request id.
    assert_jsonrpc_error(as_caller, CallerSuspendedError)
    as_target = await _send(http, broker, fresh_agent.name, alice.credential)
    assert_jsonrpc_error(as_target, AgentSuspendedError, request_id=1)

    resumed = await admin_http.post(f"/agents/{fresh_agent.name}/resume")

    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["agent"]["status"] == "active"
    _assert_completed(await _send(http, broker, "echo", fresh_agent.credential))
    _assert_completed(await _send(http, broker, fresh_agent.name, alice.credential))


async def test_rotated_credential_replaces_the_old_one_at_once(
    broker: Broker, admin_http: httpx.AsyncClient, http: httpx.AsyncClient, fresh_agent: Caller
):
    response = await admin_http.post(f"/agents/{fresh_agent.name}/credential")

    assert response.status_code == 200, response.text
    new = response.json()["credential"]
    assert new != fresh_agent.credential
    old_answer = await _send(http, broker, "echo", fresh_agent.credential)
    assert_jsonrpc_error(old_answer, InvalidCredentialError)
    _assert_completed(await _send(http, broker, "echo", new))


async def test_delete_revokes_the_credential_and_removes_the_card(
    broker: Broker, admin_http: httpx.AsyncClient, http: httpx.AsyncClient, fresh_agent: Caller
):
    response = await admin_http.delete(f"/agents/{fresh_agent.name}")

    assert response.status_code == 204, response.text
    assert_jsonrpc_error(
        await _send(http, broker, "echo", fresh_agent.credential), InvalidCredentialError
    )
    assert_rest_error(await _served_card(http, broker, fresh_agent.name), AgentNotFoundError)
    assert_rest_error(await admin_http.get(f"/agents/{fresh_agent.name}"), AgentNotFoundError)
    listed = (await admin_http.get("/agents")).json()["agents"]
    assert fresh_agent.name not in {a["name"] for a in listed}


# --- a2a-broker agents ------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return json.loads(self.stdout)

    def error_reason(self) -> str:
        """The reason of the error the CLI printed on stderr (it must have failed)."""
        assert self.code == 1, f"exit {self.code}: {self.stdout}"
        assert not self.stdout, self.stdout
        return str(json.loads(self.stderr)["error"]["details"][0]["reason"])


async def _cli(broker: Broker, *args: str, admin_token: str | None = None) -> CliResult:
    """Run ``python -m broker agents --url … --admin-token … ARGS`` as an operator would."""
    token = broker.admin_token if admin_token is None else admin_token
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "broker", "agents", "--url", broker.url, f"--admin-token={token}"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    async with asyncio.timeout(CLI_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def test_cli_administers_an_agent_from_register_to_delete(
    *,
    broker: Broker,
    http: httpx.AsyncClient,
    upstreams: dict[str, Upstream],
    tmp_path: Path,
    registered: list[str],
):
    name = _new_name()
    card = _static_card(name, upstreams["echo"].url)
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps(card))

    register = await _cli(broker, "register", name, "--card", str(card_file))
    created = register.json()
    registered.append(name)
    assert created["agent"]["name"] == name
    assert register.stderr == (
        f"registered agent {name}; its card is served at {created['agent']['broker_card_url']}\n"
    )
    _assert_completed(await _send(http, broker, "echo", created["credential"]))

    listed = await _cli(broker, "list")
    assert {a["name"]: a["status"] for a in listed.json()["agents"]}[name] == "active"
    assert listed.stderr == ""  # nothing changed, nothing said
    assert (await _cli(broker, "show", name)).json()["card"] == card

    card_file.write_text(json.dumps({**card, "version": "2.0.0"}))
    updated = await _cli(broker, "update", name, "--card", str(card_file))
    assert updated.json()["agent"]
    assert updated.stderr == f"updated the card of agent {name}\n"
    assert (await _cli(broker, "show", name)).json()["card"]["version"] == "2.0.0"

    suspended = await _cli(broker, "suspend", name)
    assert suspended.json()["agent"]["status"] == "suspended"
    assert suspended.stderr == f"suspended agent {name}\n"
    resumed = await _cli(broker, "resume", name)
    assert resumed.json()["agent"]["status"] == "active"
    assert resumed.stderr == f"resumed agent {name}\n"

    rotated = await _cli(broker, "rotate-credential", name)
    assert rotated.json()["credential"] != created["credential"]
    assert rotated.stderr.startswith(f"issued a new credential for agent {name};")
    _assert_completed(await _send(http, broker, "echo", rotated.json()["credential"]))

    deleted = await _cli(broker, "delete", name)
    assert (deleted.code, deleted.stdout) == (0, "")  # nothing for a script to read
    assert deleted.stderr == f"deleted agent {name} and revoked its credential\n"
    assert (await _cli(broker, "show", name)).error_reason() == AgentNotFoundError.reason


@pytest.mark.parametrize("command", ["show", "suspend", "resume", "rotate-credential", "delete"])
async def test_cli_call_on_an_unknown_agent_fails_with_the_error_json(broker: Broker, command: str):
    result = await _cli(broker, command, _new_name())

    assert result.error_reason() == AgentNotFoundError.reason


async def test_cli_with_a_wrong_admin_token_fails(broker: Broker):
    result = await _cli(broker, "list", admin_token="not-the-admin-token")

    assert result.error_reason() == AdminUnauthenticatedError.reason


ANSI = re.compile(r"\x1b\[[0-9;]*m")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _on_a_terminal(*argv: str) -> str:
    """Run the CLI with its standard output on a pseudo-terminal; what it showed (no colours)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200"}
    with subprocess.Popen(
        [sys.executable, "-m", "broker", *argv], stdout=follower, stderr=subprocess.PIPE,
        cwd=REPO_ROOT, env=env,
    ) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=CLI_TIMEOUT_S)
    os.close(leader)
    assert proc.returncode == 0
    return ANSI.sub("", b"".join(chunks).decode())


async def test_cli_shows_tables_on_a_terminal_and_iso_times_in_json(broker: Broker) -> None:
    listed = (await _cli(broker, "list", "--json")).json()["agents"]
    echo = next(agent for agent in listed if agent["name"] == "echo")
    assert ISO_MS.match(echo["created_at"]) and ISO_MS.match(echo["updated_at"])

    shown = await asyncio.to_thread(
        _on_a_terminal, "agents", "--url", broker.url, f"--admin-token={broker.admin_token}",
        "list",
    )

    header, *rows = [line.split() for line in shown.splitlines() if line.strip(" ─")]
    assert header == ["name", "status", "source", "bindings", "updated_at"]
    echo_row = next(row for row in rows if row[0] == "echo")
    assert echo_row[1:3] == ["active", "api"]
    assert echo_row[-1] == echo["updated_at"]

"""MCP through a real broker process: real ``mcp`` SDK servers (tests/mcp_rig/rig_server.py, each
its own process) and real ``mcp`` SDK clients holding their broker credentials.

=========  ============================================================================
``alpha``  SSE answers; the broker holds ``Bearer ALPHA_TOKEN`` for it
``beta``   JSON answers; ``Bearer BETA_TOKEN``
``junk``   answers every POST with events that are not MCP messages (aggregate = false)
=========  ============================================================================

Policy (``POLICY``): alice and bob (role:dev) may use every MCP server, nobody may call
``delete_repo``, bob may not call ``create_issue`` on alpha; echo (an A2A agent) may call alpha's
tools, and a call it makes while working on a task is judged with that task's chain.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from testkit.audit_files import audit_text
from testkit.brokers import start_broker
from testkit.config import budget
from testkit.mcp_client import connect, first_mcp_error, text_of, tool_names
from testkit.procs import Process, free_port

from .conftest import (
    ECHO_UPSTREAM_TOKEN,
    ECHO_UPSTREAM_TOKEN_ENV,
    Upstream,
    _broker_config,
    _cards_to_register,
    register_all,
)
from .wire import jsonrpc, recorded_requests, user_message

pytestmark = pytest.mark.e2e

RIG_SERVER = Path(__file__).resolve().parents[1] / "mcp_rig" / "rig_server.py"
SERVER_TOKENS = {"alpha": f"ALPHA-{secrets.token_hex(6)}", "beta": f"BETA-{secrets.token_hex(6)}",
                 "junk": "JUNK"}
TOKEN_ENVS = {name: f"E2E_MCP_{name.upper()}_TOKEN" for name in SERVER_TOKENS}
POLICY = """\
g, alice, role:dev
g, bob, role:dev
g, echo, role:worker
p, role:dev, *, originate, allow
p, role:dev, echo, SendMessage:*, allow
p, role:dev, mcp:alpha, mcp:*, allow
p, role:dev, mcp:beta, mcp:*, allow
p, role:dev, mcp:junk, mcp:*, allow
p, role:dev, *, mcp:tools/call:delete_repo, deny
p, bob, mcp:alpha, mcp:tools/call:create_issue, deny
p, role:worker, mcp:alpha, mcp:*, allow
"""
TOOL_LIMIT = 3  # [budgets.tools] "beta.whoami": calls, lifetime
TREE_LIMIT = 3  # [budgets] trees: calls, lifetime


@dataclass(frozen=True)
class McpBroker:
    url: str
    audit_dir: Path
    echo_url: str
    credentials: dict[str, str]

    def mcp(self, server: str = "") -> str:
        return f"{self.url}/mcp/{server}" if server else f"{self.url}/mcp"


def launch_rig_servers(stack: ExitStack, log_dir: Path) -> dict[str, str]:
    """alpha, beta and junk, each its own process; their MCP URLs."""
    flags = {"alpha": [], "beta": ["--json"], "junk": ["--garbage"]}
    urls = {}
    for name, extra in flags.items():
        port = free_port()
        command = [sys.executable, str(RIG_SERVER), "--port", str(port), "--name", name,
                   "--token", SERVER_TOKENS[name], *extra]
        stack.enter_context(Process.start(command, name=f"mcp-{name}", log_dir=log_dir,
                                          ready_url=f"http://127.0.0.1:{port}/healthz"))
        urls[name] = f"http://127.0.0.1:{port}/mcp"
    return urls


def mcp_servers_config(config: Any, urls: dict[str, str]) -> Any:
    for name, url in urls.items():
        config.set(f"mcp.servers.{name}", url=url, aggregate=name != "junk", timeout_s=3.0,
                   idle_timeout_s=1.5,
                   credential={"kind": "bearer", "env": TOKEN_ENVS[name]})
    return config


@pytest.fixture(scope="module")
def mcp_broker(upstreams: dict[str, Upstream], logs: Path) -> Iterator[McpBroker]:
    home = logs / "mcp-broker"
    home.mkdir(parents=True, exist_ok=True)
    policy = home / "policy.csv"
    policy.write_text(POLICY)
    with ExitStack() as stack:
        urls = launch_rig_servers(stack, home)
        config = _broker_config(free_port()).use_policy_file(policy)
        config.set("limits", upstream_timeout_s=5.0)
        config.set("budgets.tools", **{"beta.whoami": [budget("calls", "lifetime", TOOL_LIMIT)]})
        # Every task tree: 3 calls (an A2A hop and the tool calls made under it alike).
        config.set("budgets", trees=[budget("calls", "lifetime", TREE_LIMIT)])
        mcp_servers_config(config, urls)
        env = {ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN,
               **{TOKEN_ENVS[n]: t for n, t in SERVER_TOKENS.items()}}
        broker = stack.enter_context(start_broker(config, log_dir=home, env=env))
        credentials = register_all(broker, _cards_to_register(upstreams))
        yield McpBroker(broker.url, home / "var" / "audit", upstreams["echo"].url, credentials)


def reason(error: MCPError) -> str:
    return str(error.data[0]["reason"])


def audit_records(broker: McpBroker, **match: object) -> list[dict[str, Any]]:
    records = [json.loads(line) for path in sorted(broker.audit_dir.glob("audit-*.jsonl"))
               for line in audit_text(path).splitlines() if line.strip()]
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


# --- policy and lists --------------------------------------------------------------------------


async def test_lists_show_only_what_the_callers_chain_may_use(mcp_broker: McpBroker) -> None:
    async with connect(mcp_broker.mcp("alpha"), mcp_broker.credentials["alice"]) as alice:
        names = await tool_names(alice)
    assert {"add", "create_issue", "count_slowly", "filler_11"} <= set(names)
    assert "delete_repo" not in names and len(names) == len(set(names)) == 19
    async with connect(mcp_broker.mcp("alpha"), mcp_broker.credentials["bob"]) as bob:
        assert not {"create_issue", "delete_repo"} & set(await tool_names(bob))


async def test_an_allowed_tool_answers_and_a_denied_one_is_refused(mcp_broker: McpBroker) -> None:
    async with connect(mcp_broker.mcp("alpha"), mcp_broker.credentials["bob"]) as bob:
        assert text_of(await bob.call_tool("add", {"a": 2, "b": 3})) == "5"
        with pytest.raises(MCPError) as denied:
            await bob.call_tool("create_issue", {"title": "x"})
        assert (denied.value.code, reason(denied.value)) == (-32085, "POLICY_DENIED")
        with pytest.raises(MCPError) as never:
            await bob.call_tool("delete_repo", {"repo": "prod"})
        assert reason(never.value) == "POLICY_DENIED"
    async with connect(mcp_broker.mcp("beta"), mcp_broker.credentials["bob"]) as bob:
        assert text_of(await bob.call_tool("create_issue", {"title": "t"})) == "beta opened: t"


async def test_an_unknown_caller_or_server_is_refused(mcp_broker: McpBroker) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        nobody = await http.post(mcp_broker.mcp("alpha"), json=body, headers=headers)
        nowhere = await http.post(mcp_broker.mcp("nope"), json=body, headers={
            **headers, "authorization": f"Bearer {mcp_broker.credentials['alice']}"})
    assert nobody.status_code == 401
    assert nobody.json()["error"]["data"][0]["reason"] == "UNAUTHENTICATED"
    assert nowhere.json()["error"]["data"][0]["reason"] == "MCP_SERVER_NOT_FOUND"


async def test_the_server_gets_the_brokers_credential_and_a_hop_token(
    mcp_broker: McpBroker,
) -> None:
    alice_token = mcp_broker.credentials["alice"]
    async with connect(mcp_broker.mcp("alpha"), alice_token,
                       {"Cookie": "session=alice", "X-Caller": "alice"}) as alice:
        seen = json.loads(text_of(await alice.call_tool("seen_headers", {})))
    assert seen["authorization"] == f"Bearer {SERVER_TOKENS['alpha']}"
    assert alice_token not in json.dumps(seen) and "cookie" not in seen and "x-caller" not in seen
    claims = _claims(seen["a2a-delegation"])
    assert (claims["aud"], claims["chain"], claims["sub"]) == ("mcp:alpha", ["alice"], "alice")
    assert "mcp:tools/call" in claims["scope"].split()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# --- a tool call inside an A2A chain -----------------------------------------------------------


async def _token_echo_received(mcp_broker: McpBroker, caller: str) -> str:
    """``caller`` sends echo a message through the broker; the hop token echo received."""
    marker = uuid.uuid4().hex
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        headers = {"Authorization": f"Bearer {mcp_broker.credentials[caller]}"}
        answer = await jsonrpc(http, f"{mcp_broker.url}/agents/echo/jsonrpc", "SendMessage",
                               {"message": user_message(marker)}, headers=headers)
        assert answer.status_code == 200, answer.text
        [hop] = await recorded_requests(http, mcp_broker.echo_url, marker)
    return str({k.lower(): v for k, v in hop["headers"]}["a2a-delegation"])


async def test_a_tool_call_inside_an_a2a_chain_is_judged_with_the_chain(
    mcp_broker: McpBroker,
) -> None:
    """echo may call alpha's create_issue on its own, and in a task alice gave it; not in a
    task bob gave it (bob may not: authority only narrows down a chain)."""
    echo = mcp_broker.credentials["echo"]
    async with connect(mcp_broker.mcp("alpha"), echo) as alone:
        assert text_of(await alone.call_tool("create_issue", {"title": "a"})) == (
            "alpha opened: a")
    from_alice = await _token_echo_received(mcp_broker, "alice")
    async with connect(mcp_broker.mcp("alpha"), echo, {"A2A-Delegation": from_alice}) as chain:
        assert text_of(await chain.call_tool("create_issue", {"title": "b"})) == (
            "alpha opened: b")
        seen = json.loads(text_of(await chain.call_tool("seen_headers", {})))
    assert _claims(seen["a2a-delegation"])["chain"] == ["alice", "echo"]
    assert _claims(seen["a2a-delegation"])["tree"] == _claims(from_alice)["tree"]
    from_bob = await _token_echo_received(mcp_broker, "bob")
    async with connect(mcp_broker.mcp("alpha"), echo, {"A2A-Delegation": from_bob}) as chain:
        assert "create_issue" not in await tool_names(chain)
        with pytest.raises(MCPError) as denied:
            await chain.call_tool("create_issue", {"title": "c"})
    assert reason(denied.value) == "POLICY_DENIED"
    assert denied.value.data[0]["metadata"]["principal"] == "bob"
    [refused] = [r for r in audit_records(mcp_broker, caller="echo", decision="deny")
                 if r["detail"].get("mcp_name") == "create_issue"]
    assert refused["chain"] == ["bob", "echo"] and refused["tree"] == _claims(from_bob)["tree"]


# --- streams, hangs, garbage -------------------------------------------------------------------


async def test_a_streamed_tool_answer_arrives_event_by_event(mcp_broker: McpBroker) -> None:
    arrived: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrived.append((time.monotonic(), progress))

    async with connect(mcp_broker.mcp("alpha"), mcp_broker.credentials["alice"]) as alice:
        result = await alice.call_tool("count_slowly", {"steps": 5},
                                       progress_callback=on_progress)
        done = time.monotonic()
    assert text_of(result) == "counted to 5"
    assert [p for _, p in arrived] == [1, 2, 3, 4, 5]
    # The first step reached the client while the tool had four more (1.2 s) to go.
    assert done - arrived[0][0] > 0.9


async def test_a_notification_on_the_servers_own_stream_reaches_the_client(
    mcp_broker: McpBroker,
) -> None:
    """The SDK client opens the server's GET stream once its session is initialized; a
    notification no request asked for (``resources/list_changed``) reaches it through the
    broker, and the stream is audited as one allowed ``mcp:GET``."""
    methods: list[str] = []

    async def on_message(message: object) -> None:
        methods.append(str(getattr(message, "method", "")))

    async with connect(mcp_broker.mcp("alpha"), mcp_broker.credentials["alice"],
                       message_handler=on_message) as alice:
        for _ in range(50):  # the SDK opens its GET stream in the background
            assert text_of(await alice.call_tool("announce", {})) == "announced"
            if "notifications/resources/list_changed" in methods:
                break
            await anyio.sleep(0.1)
    assert "notifications/resources/list_changed" in methods
    opened = audit_records(mcp_broker, caller="alice", target="mcp:alpha", operation="mcp:GET")
    assert [r["decision"] for r in opened if r["detail"]["phase"] == "forward"][:1] == ["allow"]


@pytest.mark.parametrize("server", ["alpha", "beta"])  # an SSE server and a JSON one
async def test_a_server_that_hangs_gets_a_timeout_error(mcp_broker: McpBroker, server: str) -> None:
    async with connect(mcp_broker.mcp(server), mcp_broker.credentials["alice"]) as alice:
        started = time.monotonic()
        with pytest.raises(MCPError) as timed_out:
            await alice.call_tool("hang", {})
        assert time.monotonic() - started < 10
        assert (timed_out.value.code, reason(timed_out.value)) == (-32115, "MCP_SERVER_TIMEOUT")
        assert text_of(await alice.call_tool("add", {"a": 1, "b": 1})) == "2"  # still usable


async def test_a_server_that_answers_garbage_gets_an_error(mcp_broker: McpBroker) -> None:
    with pytest.raises(BaseExceptionGroup) as failed:  # the SDK raises from its task group
        async with connect(mcp_broker.mcp("junk"), mcp_broker.credentials["alice"]):
            pass
    garbage = first_mcp_error(failed.value)
    assert (garbage.code, reason(garbage)) == (-32112, "MCP_SERVER_BAD_RESPONSE")


# --- the virtual server, budgets, audit --------------------------------------------------------


async def test_the_virtual_server_offers_the_allowed_tools_of_every_server(
    mcp_broker: McpBroker,
) -> None:
    async with connect(mcp_broker.mcp(), mcp_broker.credentials["bob"]) as bob:
        names = set(await tool_names(bob))
        assert {"alpha__add", "beta__create_issue", "beta__filler_11"} <= names
        assert "alpha__create_issue" not in names
        assert not [n for n in names if n.endswith("delete_repo") or n.startswith("junk")]
        assert text_of(await bob.call_tool("alpha__add", {"a": 4, "b": 5})) == "9"
        with pytest.raises(MCPError) as denied:
            await bob.call_tool("alpha__create_issue", {"title": "t"})
        assert reason(denied.value) == "POLICY_DENIED"
        with pytest.raises(MCPError) as unknown:
            await bob.call_tool("junk__anything", {})
        assert reason(unknown.value) == "MCP_NAME_NOT_FOUND"


async def test_a_tools_budget_counts_every_call_of_it(mcp_broker: McpBroker) -> None:
    async with connect(mcp_broker.mcp("beta"), mcp_broker.credentials["alice"]) as alice:
        for _ in range(TOOL_LIMIT):
            assert text_of(await alice.call_tool("whoami", {})) == "beta"
        with pytest.raises(MCPError) as spent:
            await alice.call_tool("whoami", {})
        assert reason(spent.value) == "BUDGET_EXHAUSTED"
        assert spent.value.data[0]["metadata"]["scope"] == "tool:beta.whoami"
        assert text_of(await alice.call_tool("add", {"a": 1, "b": 2})) == "3"  # another tool


async def test_tool_calls_inside_a_task_count_in_its_trees_budget(mcp_broker: McpBroker) -> None:
    """alice's hop to echo is the tree's first call; echo's tool calls under that task are
    the second and third; the fourth is refused, on the tree's budget."""
    token = await _token_echo_received(mcp_broker, "alice")
    echo = mcp_broker.credentials["echo"]
    async with connect(mcp_broker.mcp("alpha"), echo, {"A2A-Delegation": token}) as chain:
        for n in range(TREE_LIMIT - 1):
            assert text_of(await chain.call_tool("add", {"a": n, "b": 1})) == str(n + 1)
        with pytest.raises(MCPError) as spent:
            await chain.call_tool("add", {"a": 0, "b": 0})
    assert reason(spent.value) == "BUDGET_EXHAUSTED"
    assert spent.value.data[0]["metadata"]["scope"] == f"tree:{_claims(token)['tree']}"


async def test_every_call_is_audited_without_its_arguments(mcp_broker: McpBroker) -> None:
    secret = f"do-not-log-{uuid.uuid4().hex}"
    async with connect(mcp_broker.mcp("alpha"), mcp_broker.credentials["alice"]) as alice:
        await alice.call_tool("create_issue", {"title": secret})
        with pytest.raises(MCPError):
            await alice.call_tool("delete_repo", {"repo": secret})
    records = [r for r in audit_records(mcp_broker, caller="alice", target="mcp:alpha")
               if r["detail"].get("mcp_name") in {"create_issue", "delete_repo"}]
    text = json.dumps(records)
    assert secret not in text
    calls = [r for r in records if r["detail"].get("mcp_name") == "create_issue"]
    phases = [r["detail"]["phase"] for r in calls]
    assert phases.count("forward") == phases.count("outcome") >= 1
    forward = next(r for r in calls if r["detail"]["phase"] == "forward")
    assert forward["operation"] == "mcp:tools/call" and forward["decision"] == "allow"
    assert forward["detail"]["argument_names"] == "title"
    assert len(forward["detail"]["arguments_sha256"]) == 64
    denied = [r for r in records if r["detail"].get("mcp_name") == "delete_repo"]
    assert denied and all(r["decision"] == "deny" and r["reason"] == "POLICY_DENIED"
                          for r in denied)


async def test_clients_of_both_protocol_eras_go_through(mcp_broker: McpBroker) -> None:
    """The SDK's default client speaks 2026-07-28 (no sessions) to one server; on the virtual
    server its probe is answered METHOD_NOT_FOUND and it opens a session instead."""
    bob = mcp_broker.credentials["bob"]
    async with connect(mcp_broker.mcp("alpha"), bob, mode="auto") as modern:
        assert modern.protocol_version == "2026-07-28"
        assert "create_issue" not in await tool_names(modern)
        assert text_of(await modern.call_tool("add", {"a": 20, "b": 22})) == "42"
        with pytest.raises(MCPError) as denied:
            await modern.call_tool("create_issue", {"title": "x"})
        assert reason(denied.value) == "POLICY_DENIED"
    async with connect(mcp_broker.mcp(), bob, mode="auto") as fallback:
        assert fallback.protocol_version == "2025-11-25"
        assert text_of(await fallback.call_tool("beta__add", {"a": 1, "b": 2})) == "3"


async def test_prompts_and_resources_through_the_virtual_server(mcp_broker: McpBroker) -> None:
    async with connect(mcp_broker.mcp(), mcp_broker.credentials["alice"]) as alice:
        assert "alpha__greet" in {p.name for p in (await alice.list_prompts()).prompts}
        prompt = await alice.get_prompt("beta__greet", {"who": "Lin"})
        assert "Lin" in prompt.messages[0].content.text  # type: ignore[union-attr]
        first = await alice.list_resources()  # one server's page per page
        second = await alice.list_resources(cursor=first.next_cursor)
        uris = {str(r.uri) for r in [*first.resources, *second.resources]}
        assert uris == {"mcp-broker://alpha/note%3A%2F%2Fhello",
                        "mcp-broker://beta/note%3A%2F%2Fhello"}
        read = await alice.read_resource("mcp-broker://alpha/note%3A%2F%2Fhello")
        assert read.contents[0].text == "hello from alpha"  # type: ignore[union-attr]

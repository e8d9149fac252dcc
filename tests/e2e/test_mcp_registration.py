"""MCP servers registered at run time, across two broker processes on one private Redis (same
signing key, as replicas behind one load balancer), in front of a real ``mcp`` SDK server
(tests/mcp_rig/rig_server.py) reached by the real ``mcp`` SDK client.

* Registered through broker A's admin API, the server is listed and called through broker B;
  the server receives the credential the broker holds for it, never the caller's; the virtual
  server of B offers its tools.
* The held credential rotated on A: a session opened before ends (404 MCP_SESSION_NOT_FOUND on
  B) and the next calls through B carry the new credential.
* Removed on A: calls through either broker are refused MCP_SERVER_NOT_FOUND, the virtual
  server no longer offers it, and an old session id does not bring it back.
* An egress-forbidden URL, a configured server's name: refused, with the reason, and audited.
* ``a2a-broker mcp-servers`` against a running broker, from register to remove.
No secret appears in any answer, audit record or CLI output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from testkit.audit_files import audit_text as records_text
from testkit.brokers import BrokerProcess, generate_signing_key, launch_broker
from testkit.config import BrokerConfig
from testkit.mcp_client import connect, text_of, tool_names
from testkit.procs import REPO_ROOT, Process, free_port, local_url
from testkit.redis_server import RedisServer

pytestmark = pytest.mark.e2e

RIG_SERVER = Path(__file__).resolve().parents[1] / "mcp_rig" / "rig_server.py"
FIRST = f"MCP-FIRST-{secrets.token_hex(8)}"
SECOND = f"MCP-SECOND-{secrets.token_hex(8)}"
CONFIGURED_TOKEN_ENV = "E2E_MCP_REG_CONFIGURED"
CALLER = "copilot"
CALLER_CREDENTIAL = f"a2ab_copilot-{secrets.token_hex(8)}"
CLI_TIMEOUT_S = 30.0


@dataclass
class Pair:
    a: BrokerProcess
    b: BrokerProcess
    rig: str  # the rig server's MCP endpoint
    logs: Path

    def audit(self, which: int) -> list[dict[str, Any]]:
        folder = self.logs / f"audit{which}"
        return [json.loads(line) for path in sorted(folder.glob("audit-*.jsonl"))
                for line in records_text(path).splitlines() if line.strip()]

    def audit_text(self) -> str:
        paths = sorted(self.logs.glob("audit*/audit-*.jsonl"))
        return "".join(records_text(path) for path in paths)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("mcp-registration")
    with ExitStack() as stack:
        store = stack.enter_context(RedisServer.running())
        port = free_port()
        stack.enter_context(Process.start(
            [sys.executable, str(RIG_SERVER), "--port", str(port), "--name", "tools",
             "--token", FIRST, "--token", SECOND],
            name="mcp-tools", log_dir=tmp, ready_url=f"http://127.0.0.1:{port}/healthz"))
        rig = f"http://127.0.0.1:{port}/mcp"
        key_file = generate_signing_key(tmp / "broker-key.pem")
        ports = [free_port(), free_port()]
        config = BrokerConfig(port=0).set("server", public_url=local_url(ports[0]),
                                          log_level="warning")
        config.use_redis(store.url, key_prefix="mcpreg").set("keys", signing_key_file=key_file)
        config.set("audit", fsync=False).identities({CALLER: CALLER_CREDENTIAL})
        config.set("mcp.servers.configured", url=rig,
                   credential={"kind": "bearer", "env": CONFIGURED_TOKEN_ENV})
        brokers = []
        for i, broker_port in enumerate(ports):
            replica = config.copy(port=broker_port).set("audit", dir=tmp / f"audit{i}")
            brokers.append(launch_broker(replica, log_dir=tmp, name=f"mcpreg-broker{i}",
                                         env={CONFIGURED_TOKEN_ENV: FIRST}))
            stack.enter_context(brokers[-1].process.stopped_after())
        for broker in brokers:
            broker.wait_ready()
        yield Pair(brokers[0], brokers[1], rig, tmp)


async def seen_by_the_server(url: str) -> dict[str, str]:
    async with connect(url, CALLER_CREDENTIAL) as client:
        seen: dict[str, str] = json.loads(text_of(await client.call_tool("seen_headers", {})))
    return seen


async def refusal_of(url: str) -> str:
    """The reason the SDK client was refused with when it used ``url`` ("" if it was not)."""
    try:
        await seen_by_the_server(url)
    except BaseExceptionGroup as group:  # the SDK's task group wraps what the broker answered
        matched, _ = group.split(MCPError)
        if matched is None:
            raise
        pending: list[BaseException] = [matched]
        while isinstance(pending[0], BaseExceptionGroup):
            pending = list(pending[0].exceptions)
        error = pending[0]
        assert isinstance(error, MCPError)
        return str(error.data[0]["reason"])
    except MCPError as error:
        return str(error.data[0]["reason"])
    return ""


async def within(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 8.0) -> None:
    """``check`` holds within ``seconds`` (the control channel carries changes at once; the
    periodic re-read bounds it should a message be lost)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.1)


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def reason(answer: httpx.Response) -> str:
    body = answer.json()
    if "details" in body.get("error", {}):  # the admin API's error document
        return str(body["error"]["details"][0]["reason"])
    return str(body["error"]["data"][0]["reason"])  # an MCP JSON-RPC error


MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "authorization": f"Bearer {CALLER_CREDENTIAL}"}


async def open_session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    opened = await http.post(url, headers=MCP_HEADERS, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})
    assert opened.status_code == 200, opened.text
    return {**MCP_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25"}


def tools_call(rid: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}


async def test_registered_on_one_broker_called_through_the_other_rotated_and_removed(
    pair: Pair,
) -> None:
    admin_a, admin_b = pair.a.admin_headers, pair.b.admin_headers
    async with httpx.AsyncClient(trust_env=False, timeout=20) as http:
        registered = await http.post(f"{pair.a.url}/admin/mcp-servers", headers=admin_a, json={
            "name": "tools", "url": pair.rig, "description": "the rig",
            "credential": {"kind": "bearer", "value": FIRST}})
        assert registered.status_code == 201, registered.text
        assert registered.json()["server"]["credential"] == {
            "kind": "bearer", "fingerprint": fingerprint(FIRST)}

        shown = await http.get(f"{pair.b.url}/admin/mcp-servers/tools", headers=admin_b)
        assert shown.status_code == 200 and shown.json()["server"]["source"] == "api"
        listed = await http.get(f"{pair.b.url}/admin/mcp-servers", headers=admin_b)
        assert [s["name"] for s in listed.json()["servers"]] == ["configured", "tools"]
        assert FIRST not in registered.text + shown.text + listed.text

        async def served_on_b() -> bool:
            return await refusal_of(f"{pair.b.url}/mcp/tools") == ""

        await within(served_on_b, "the registration served by broker B")
        seen = await seen_by_the_server(f"{pair.b.url}/mcp/tools")
        assert CALLER_CREDENTIAL not in json.dumps(seen)  # the broker's credential, not hers
        async with connect(f"{pair.b.url}/mcp", CALLER_CREDENTIAL) as virtual:
            names = await tool_names(virtual)
            assert "tools__add" in names and "configured__add" in names
            assert text_of(await virtual.call_tool("tools__add", {"a": 2, "b": 3})) == "5"

        # Rotate on A: B's session opened before ends; B's next calls carry the new secret.
        session = await open_session(http, f"{pair.b.url}/mcp/tools")
        before = await http.post(f"{pair.b.url}/mcp/tools", headers=session, json=tools_call(1))
        assert before.status_code == 200 and "result" in before.text, before.text
        rotated = await http.post(f"{pair.a.url}/admin/mcp-servers/tools/credential",
                                  headers=admin_a,
                                  json={"credential": {"kind": "bearer", "value": SECOND}})
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["server"]["credential"]["fingerprint"] == fingerprint(SECOND)
        assert SECOND not in rotated.text

        async def rotated_on_b() -> bool:
            seen = await seen_by_the_server(f"{pair.b.url}/mcp/tools")
            return seen["authorization"] == f"Bearer {SECOND}"

        await within(rotated_on_b, "the new credential used by broker B")
        after = await http.post(f"{pair.b.url}/mcp/tools", headers=session, json=tools_call(2))
        assert after.status_code == 404, after.text
        assert reason(after) == "MCP_SESSION_NOT_FOUND"
        live = await open_session(http, f"{pair.a.url}/mcp/tools")

        # Remove on A: refused on both, everywhere the server was offered.
        removed = await http.delete(f"{pair.a.url}/admin/mcp-servers/tools", headers=admin_a)
        assert removed.status_code == 204, removed.text

        async def refused_everywhere() -> bool:
            answers = [await http.post(f"{url}/mcp/tools", headers=MCP_HEADERS,
                                       json=tools_call(3)) for url in (pair.a.url, pair.b.url)]
            return all(a.status_code == 200 and "error" in a.json() and
                       reason(a) == "MCP_SERVER_NOT_FOUND" for a in answers)

        await within(refused_everywhere, "the removal seen by both brokers")
        old = await http.post(f"{pair.b.url}/mcp/tools", headers=live, json=tools_call(4))
        assert reason(old) == "MCP_SERVER_NOT_FOUND"
        assert await refusal_of(f"{pair.b.url}/mcp/tools") == "MCP_SERVER_NOT_FOUND"
        async with connect(f"{pair.b.url}/mcp", CALLER_CREDENTIAL) as virtual:
            names = await tool_names(virtual)
        assert "configured__add" in names and not [n for n in names if n.startswith("tools__")]
        gone = await http.get(f"{pair.b.url}/admin/mcp-servers/tools", headers=admin_b)
        assert (gone.status_code, reason(gone)) == (404, "MCP_SERVER_NOT_FOUND")

    changes = [(r["detail"]["action"], r["detail"]["server"]) for r in pair.audit(0)
               if r["kind"] == "registry.change"]
    assert changes == [("mcp.register", "tools"), ("mcp.credential.rotate", "tools"),
                       ("mcp.remove", "tools")]
    assert FIRST not in pair.audit_text() and SECOND not in pair.audit_text()


async def test_a_forbidden_url_and_a_configured_name_are_refused_and_audited(pair: Pair) -> None:
    admin = pair.a.admin_headers
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        private = await http.post(f"{pair.a.url}/admin/mcp-servers", headers=admin, json={
            "name": "internal", "url": "http://10.1.2.3/mcp",
            "credential": {"kind": "bearer", "value": FIRST}})
        clash = await http.post(f"{pair.a.url}/admin/mcp-servers", headers=admin, json={
            "name": "configured", "url": pair.rig})
        change = await http.put(f"{pair.a.url}/admin/mcp-servers/configured", headers=admin,
                                json={"description": "mine now"})
        typo = await http.post(f"{pair.a.url}/admin/mcp-servers", headers=admin, json={
            "name": "typo", "url": pair.rig, "credentials": {}})
        nothing = await http.get(f"{pair.b.url}/admin/mcp-servers/internal",
                                 headers=pair.b.admin_headers)
    assert (private.status_code, reason(private)) == (400, "EGRESS_DENIED")
    assert (clash.status_code, reason(clash)) == (409, "MCP_SERVER_EXISTS")
    assert "[mcp.servers.configured]" in clash.json()["error"]["message"]
    assert (change.status_code, reason(change)) == (400, "MCP_SERVER_INVALID")
    assert (typo.status_code, reason(typo)) == (400, "MCP_SERVER_INVALID")
    assert "credentials" in typo.json()["error"]["message"]
    assert (nothing.status_code, reason(nothing)) == (404, "MCP_SERVER_NOT_FOUND")
    refusals = {(r["detail"]["action"], r["detail"]["server"]): r["detail"]["reason"]
                for r in pair.audit(0) if r["kind"] == "registry.refused"}
    assert refusals[("mcp.register", "internal")] == "EGRESS_DENIED"
    assert refusals[("mcp.register", "configured")] == "MCP_SERVER_EXISTS"
    assert refusals[("mcp.update", "configured")] == "MCP_SERVER_INVALID"
    assert refusals[("mcp.register", "typo")] == "MCP_SERVER_INVALID"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


async def cli(broker: BrokerProcess, *args: str, stdin: str = "",
              env: dict[str, str] | None = None) -> CliResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "mcp-servers", "--url", broker.url,
        f"--admin-token={broker.admin_token}", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env={**os.environ, **(env or {})})
    async with asyncio.timeout(CLI_TIMEOUT_S):
        out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def test_the_cli_administers_an_mcp_server_from_register_to_remove(pair: Pair) -> None:
    b = pair.b
    registered = await cli(b, "register", "cli-tools", pair.rig, "--description", "by the CLI",
                           "--credential", "bearer", "--secret-env", "MY_MCP_TOKEN",
                           env={"MY_MCP_TOKEN": FIRST})
    assert registered.json()["server"]["credential"]["fingerprint"] == fingerprint(FIRST)
    assert registered.stderr == (
        f"registered MCP server cli-tools; callers reach it at {b.url}/mcp/cli-tools\n")
    seen = await seen_by_the_server(f"{pair.a.url}/mcp/cli-tools")  # through the other broker
    assert seen["authorization"] == f"Bearer {FIRST}"

    listed = await cli(b, "list")
    assert "cli-tools" in [s["name"] for s in listed.json()["servers"]]
    assert listed.stderr == ""  # nothing changed, nothing said
    shown = (await cli(b, "show", "cli-tools")).json()["server"]
    assert (shown["description"], shown["aggregate"]) == ("by the CLI", True)

    updated = await cli(b, "update", "cli-tools", "--no-aggregate", "--timeout", "30")
    assert (updated.json()["server"]["aggregate"], updated.json()["server"]["timeout_s"]) == (
        False, 30.0)
    assert updated.stderr == "updated MCP server cli-tools\n"

    rotated = await cli(b, "rotate", "cli-tools", "--credential", "bearer", "--secret-stdin",
                        stdin=SECOND + "\n")
    assert rotated.json()["server"]["credential"]["fingerprint"] == fingerprint(SECOND)
    assert rotated.stderr.startswith("the broker holds a new credential for MCP server cli-tools")
    seen = await seen_by_the_server(f"{pair.a.url}/mcp/cli-tools")
    assert seen["authorization"] == f"Bearer {SECOND}"

    no_secret = await cli(b, "rotate", "cli-tools", "--credential", "bearer")
    assert no_secret.code == 2 and "needs its secret" in no_secret.stderr

    removed = await cli(b, "remove", "cli-tools")
    assert (removed.code, removed.stdout) == (0, "")
    assert removed.stderr == "removed MCP server cli-tools\n"
    missing = await cli(b, "show", "cli-tools", "--json")
    assert missing.code == 1
    assert json.loads(missing.stderr)["error"]["details"][0]["reason"] == "MCP_SERVER_NOT_FOUND"
    everything = "".join(r.stdout + r.stderr for r in (registered, listed, updated, rotated))
    assert FIRST not in everything and SECOND not in everything

"""MCP across broker replicas: three broker processes on one private Redis (same signing key,
same public URL, as behind one load balancer) in front of a real ``mcp`` SDK server.

* A session opened on one replica is used on the others (the sealed session id is the
  binding; no replica keeps a table), its server's own stream (GET) included.
* Tool calls raced round robin over the three replicas against a tool budget that fits
  exactly N of them: exactly N reach the tool, the others are refused BUDGET_EXHAUSTED, and
  nothing stays reserved afterwards.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from testkit.brokers import generate_signing_key, launch_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import Process, free_port, local_url
from testkit.redis_server import RedisServer

pytestmark = pytest.mark.e2e

RIG_SERVER = Path(__file__).resolve().parents[1] / "mcp_rig" / "rig_server.py"
SERVER_TOKEN = f"TOOLS-{secrets.token_hex(6)}"
TOKEN_ENV = "E2E_MCP_REPLICAS_TOKEN"
KEY_PREFIX = "mcprace"
REPLICAS = 3
LIMIT = 12
TRIES = 45
CALLER = "racer"
CREDENTIAL = f"a2ab_racer-{secrets.token_hex(8)}"
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "authorization": f"Bearer {CREDENTIAL}"}


@dataclass
class Replicas:
    urls: list[str]
    redis: redis.Redis


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("mcp-replicas")
    with ExitStack() as stack:
        store = stack.enter_context(RedisServer.running())
        port = free_port()
        stack.enter_context(Process.start(
            [sys.executable, str(RIG_SERVER), "--port", str(port), "--name", "tools",
             "--token", SERVER_TOKEN, "--json"],
            name="mcp-tools", log_dir=tmp, ready_url=f"http://127.0.0.1:{port}/healthz"))
        key_file = generate_signing_key(tmp / "broker-key.pem")
        ports = [free_port() for _ in range(REPLICAS)]
        config = BrokerConfig(port=0).set("server", public_url=local_url(ports[0]),
                                          log_level="warning")
        config.use_redis(store.url, key_prefix=KEY_PREFIX).set("keys", signing_key_file=key_file)
        config.set("audit", fsync=False).identities({CALLER: CREDENTIAL})
        config.set("mcp.servers.tools", url=f"http://127.0.0.1:{port}/mcp",
                   credential={"kind": "bearer", "env": TOKEN_ENV})
        config.set("budgets.tools", **{"tools.add": [budget("calls", "lifetime", LIMIT)]})
        brokers = []
        for i, broker_port in enumerate(ports):
            replica = config.copy(port=broker_port).set("audit", dir=tmp / f"audit{i}")
            brokers.append(launch_broker(replica, log_dir=tmp, name=f"mcp-broker{i}",
                                         env={TOKEN_ENV: SERVER_TOKEN}))
            stack.enter_context(brokers[-1].process.stopped_after())
        for broker in brokers:
            broker.wait_ready()
        yield Replicas([b.url for b in brokers], stack.enter_context(store.client()))


def _rpc(method: str, params: dict[str, Any], rid: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


async def _open_session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    opened = await http.post(url, headers=HEADERS, json=_rpc("initialize", {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "racer", "version": "1"}}, 0))
    assert opened.status_code == 200, opened.text
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"],
               "mcp-protocol-version": "2025-11-25"}
    done = await http.post(url, headers=headers,
                           json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert done.status_code == 202, done.text
    return headers


def _outcome(answer: httpx.Response) -> str:
    message = answer.json()
    if "result" in message:
        return "ok" if message["result"]["content"][0]["text"] == "3" else "wrong"
    return str(message["error"]["data"][0]["reason"])


async def test_a_tool_budget_holds_exactly_across_replicas(replicas: Replicas) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=20,
                                 limits=httpx.Limits(max_connections=100)) as http:
        headers = await _open_session(http, f"{replicas.urls[0]}/mcp/tools")

        async def call(i: int) -> str:
            url = f"{replicas.urls[i % REPLICAS]}/mcp/tools"  # the session, on every replica
            body = _rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, i + 1)
            return _outcome(await http.post(url, headers=headers, json=body))

        outcomes = Counter(await asyncio.gather(*(call(i) for i in range(TRIES))))
    assert outcomes == {"ok": LIMIT, "BUDGET_EXHAUSTED": TRIES - LIMIT}, outcomes
    # Nothing stays reserved (a settle may follow its answer by a moment: bounded wait).
    for _ in range(50):
        if replicas.redis.hlen(f"{KEY_PREFIX}:{{budget}}:rsv") == 0:
            break
        await asyncio.sleep(0.1)
    assert replicas.redis.hlen(f"{KEY_PREFIX}:{{budget}}:rsv") == 0


async def test_a_session_opened_on_one_replica_is_refused_to_another_caller(
    replicas: Replicas,
) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        headers = await _open_session(http, f"{replicas.urls[1]}/mcp/tools")
        listed = await http.post(f"{replicas.urls[2]}/mcp/tools", headers=headers,
                                 json=_rpc("tools/list", {}, 7))
        stolen = await http.post(f"{replicas.urls[0]}/mcp/tools",
                                 headers={**headers, "authorization": "Bearer someone-else"},
                                 json=_rpc("tools/list", {}, 8))
    assert "add" in {t["name"] for t in listed.json()["result"]["tools"]}
    assert stolen.status_code == 401  # no such credential: refused before the session is read
    assert json.loads(stolen.text)["error"]["data"][0]["reason"] == "INVALID_CREDENTIAL"


async def test_the_servers_own_stream_opens_on_another_replica(replicas: Replicas) -> None:
    """Opened on replica 0, the session's GET stream on replica 2 relays the notification a
    tool call on replica 1 makes the server send outside any request."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        headers = await _open_session(http, f"{replicas.urls[0]}/mcp/tools")
        listen = {**headers, "accept": "text/event-stream"}
        async with http.stream("GET", f"{replicas.urls[2]}/mcp/tools", headers=listen) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            called = await http.post(f"{replicas.urls[1]}/mcp/tools", headers=headers,
                                     json=_rpc("tools/call", {"name": "announce"}, 9))
            assert called.status_code == 200, called.text
            async with asyncio.timeout(5):
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and "list_changed" in line:
                        break
    assert json.loads(line[5:])["method"] == "notifications/resources/list_changed"

"""Anomaly alerts driven by real traffic: two broker processes on one Redis, real a2a-sdk agents.

Each rule is set off on purpose with small thresholds; the alerts are read back through the
other replica's ``/admin/alerts`` (the state and the kept alerts are shared through Redis), and
each one is also an audit record, a metric on ``/metrics`` and a signed webhook delivery (the
first delivery is answered 500, so every alert arrives on a retry).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from prometheus_client.parser import text_string_to_metric_families

from broker.errors import PolicyDeniedError
from testkit.audit_files import audit_text
from testkit.config import budget
from testkit.procs import free_port

from .hopper import hopper_card
from .mesh import Mesh, hop_reply, new_marker, originate, plan, start_mesh
from .wire import assert_jsonrpc_error

pytestmark = pytest.mark.e2e
AGENTS = ["a", "b", "c", "d", "e", "f"]
CALLERS = ["alice", "mallory", "spender"]
MESH = "group:mesh"
POLICY = "\n".join(
    [
        "g, alice, role:user",
        "g, spender, role:user",
        "g, mallory, role:guest",
        *(f"g, {name}, role:agent" for name in AGENTS),
        *(f"g2, {name}, {MESH}" for name in AGENTS),
        "p, role:user, *, originate, allow",
        "p, role:guest, *, originate, allow",
        f"p, role:user, {MESH}, SendMessage:*, allow",
        f"p, role:agent, {MESH}, SendMessage:*, allow",
        "p, role:guest, b, SendMessage:*, allow",  # mallory may ask b only
        "",
    ]
)
KEY_ENV = "E2E_ALERT_WEBHOOK_KEY"
WEBHOOK_KEY = "e2e-webhook-key"
BUCKET_S = 2
ALERTS = {
    "rate_bucket_s": BUCKET_S,
    "rate_min_calls": 10,
    "rate_factor": 3.0,
    "rate_warmup_buckets": 1,
    "rate_smoothing": 0.5,
    "denial_burst": 3,
    "guard_burst": 3,
    "budget_burn_factor": 1.0,
    "budget_burn_min_share": 0.5,
    "budget_check_interval_s": 0.5,
    "depth_warmup_calls": 2,
    "webhook_retries": 3,
}


class _Webhook(BaseHTTPRequestHandler):
    """Answers 500 to the first delivery of each alert, 200 after, and keeps what came."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    failed_once: ClassVar[set[str]] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        alert_id = self.headers.get("a2a-broker-alert-id", "")
        with self.lock:
            self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            first = alert_id not in self.failed_once
            self.failed_once.add(alert_id)
        self.send_response(500 if first else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, webhook: str
) -> Iterator[Mesh]:
    tables = {
        "alerts": {**ALERTS, "webhook_url": webhook, "webhook_key_env": KEY_ENV},
        "delegation.limits": {"max_depth": 3},
        "budgets.agents": {"spender": [budget("calls", "hour", 4)]},
    }
    with start_mesh(
        tmp_path_factory.mktemp("alerts"),
        redis_url,
        agents=AGENTS,
        callers=CALLERS,
        policy=POLICY,
        tables=tables,
        broker_env={KEY_ENV: WEBHOOK_KEY},
    ) as started:
        yield started


async def _alerts(http: httpx.AsyncClient, mesh: Mesh, via: int = 1) -> list[dict[str, Any]]:
    response = await http.get(f"{mesh.brokers[via]}/admin/alerts", headers=mesh.admin_headers)
    assert response.status_code == 200, response.text
    return list(response.json()["alerts"])


async def _wait_for(
    http: httpx.AsyncClient, mesh: Mesh, rule: str, subject: str
) -> list[dict[str, Any]]:
    """The alerts of ``rule`` about ``subject``, once there is one (read from broker 1)."""
    deadline = time.monotonic() + 15.0
    while True:
        found = [
            a for a in await _alerts(http, mesh) if a["rule"] == rule and a["subject"] == subject
        ]
        if found or time.monotonic() > deadline:
            assert found, f"no {rule} alert about {subject}: {await _alerts(http, mesh)}"
            await asyncio.sleep(1.0)  # anything raised twice would show by now
            return [
                a for a in await _alerts(http, mesh)
                if a["rule"] == rule and a["subject"] == subject
            ]  # fmt: skip
        await asyncio.sleep(0.2)


async def test_the_first_call_on_an_edge_raises_one_alert_across_replicas(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        # Both replicas see alice -> b for the first time at once.
        await asyncio.gather(
            *(hop_reply(http, mesh, "alice", "b", plan(new_marker("e")), via=i % 2)
              for i in range(6))
        )  # fmt: skip
        found = await _wait_for(http, mesh, "new_edge", "alice>b")
        assert len(found) == 1
        assert "alice called b for the first time" in found[0]["summary"]


async def test_a_call_rate_far_above_the_edge_s_baseline(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        await hop_reply(http, mesh, "alice", "c", plan(new_marker("r")))
        await asyncio.sleep(BUCKET_S + 0.2)  # one bucket of history: a baseline of about 1
        await asyncio.gather(
            *(hop_reply(http, mesh, "alice", "c", plan(new_marker("r")), via=i % 2)
              for i in range(30))
        )  # fmt: skip
        found = await _wait_for(http, mesh, "call_rate", "alice>c")
        assert len(found) == 1
        assert found[0]["detail"]["calls"] >= ALERTS["rate_min_calls"]


async def test_a_burst_of_policy_denials(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        for i in range(4):
            refused = await originate(http, mesh, "mallory", "a", plan(new_marker("d")), via=i % 2)
            assert_jsonrpc_error(refused, PolicyDeniedError)
        found = await _wait_for(http, mesh, "denial_burst", "mallory")
        assert len(found) == 1
        assert found[0]["detail"]["count"] >= ALERTS["denial_burst"]


async def test_a_burst_of_guard_refusals(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(3):  # c's call to d would be the fourth hop: HOP_LIMIT_EXCEEDED
            reply = await hop_reply(http, mesh, "alice", "a", plan(new_marker("g"), "b", "c", "d"))
            assert "HOP_LIMIT_EXCEEDED" in json.dumps(reply)
        found = await _wait_for(http, mesh, "guard_burst", "c")
        assert len(found) == 1


async def test_a_chain_deeper_than_usual(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(2):  # e -> f is usually the second hop
            await hop_reply(http, mesh, "alice", "e", plan(new_marker("u"), "f"))
        await hop_reply(http, mesh, "alice", "d", plan(new_marker("u"), "e", "f"))
        found = await _wait_for(http, mesh, "deep_chain", "e>f")
        assert len(found) == 1
        assert (found[0]["detail"]["depth"], found[0]["detail"]["usual"]) == (3, 2)


async def test_a_budget_burning_faster_than_its_window_allows(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(4):  # the whole hour's budget at once
            await hop_reply(http, mesh, "spender", "b", plan(new_marker("s")))
        found = await _wait_for(http, mesh, "budget_burn", "agent:spender")
        assert len(found) == 1
        # Early in the hour it may fire before the fourth call: from half the budget on.
        spent = found[0]["detail"]["used"] + found[0]["detail"]["reserved"]
        assert 2 <= spent <= 4


def _signed(card: dict[str, Any], kid: str) -> dict[str, Any]:
    header = json.dumps({"alg": "EdDSA", "kid": kid, "typ": "JOSE"}).encode()
    protected = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
    return {**card, "signatures": [{"protected": protected, "signature": "c2ln"}]}


async def test_an_agent_card_signed_with_a_new_key(mesh: Mesh) -> None:
    card = MessageToDict(hopper_card("z", mesh.hopper))
    async with httpx.AsyncClient(timeout=30, headers=mesh.admin_headers) as http:
        created = await http.post(
            f"{mesh.brokers[0]}/admin/agents", json={"name": "z", "card": _signed(card, "k-1")}
        )
        assert created.status_code == 201, created.text
        same = await http.put(
            f"{mesh.brokers[1]}/admin/agents/z", json={"card": _signed(card, "k-1")}
        )
        assert same.status_code == 200, same.text
        rotated = await http.put(
            f"{mesh.brokers[0]}/admin/agents/z", json={"card": _signed(card, "k-2")}
        )
        assert rotated.status_code == 200, rotated.text
        found = await _wait_for(http, mesh, "new_card_key", "z")
        assert len(found) == 1 and found[0]["detail"]["kid"] == "k-2"


async def test_every_alert_is_audited_metered_signed_and_acknowledged_once(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        await hop_reply(http, mesh, "alice", "f", plan(new_marker("w")))
        await _wait_for(http, mesh, "new_edge", "alice>f")
        alerts = await _alerts(http, mesh)
        ids = {a["id"] for a in alerts}
        # The audit: one record of kind "alert" per alert, in one of the two replicas' chains.
        audited = _audit_alerts(mesh.logs)
        assert ids <= set(audited)
        assert all(audited[i]["reason"] == a["rule"] for a in alerts for i in [a["id"]])
        # The metric: summed over both replicas, one per alert.
        assert _alerts_metric(http, mesh) == len(alerts)
        # Beside it, the approvals waiting (none here), read from the store at scrape time.
        scraped = (await http.get(f"{mesh.brokers[1]}/metrics", headers=mesh.admin_headers)).text
        assert 'a2a_broker_approvals_pending{protocol="a2a"} 0.0' in scraped
        # The webhook: each alert posted again after a 500, with a signature that verifies.
        deadline = time.monotonic() + 15
        while _delivered() < ids and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread
            await asyncio.sleep(0.2)
        assert _delivered() >= ids
        for headers, body in _Webhook.received:
            timestamp, _, mac = headers["a2a-broker-signature"].partition(",v1=")
            signed = f"{timestamp.removeprefix('t=')}.".encode() + body
            expected = hmac.new(WEBHOOK_KEY.encode(), signed, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(mac, expected)
        # Acknowledged on one replica, seen acknowledged on the other; not twice.
        target = alerts[0]["id"]
        ack = f"{mesh.brokers[0]}/admin/alerts/{target}/ack"
        assert (await http.post(ack, headers=mesh.admin_headers)).status_code == 200
        again = await http.post(ack, headers=mesh.admin_headers)
        assert again.status_code == 404 and "ALERT_NOT_FOUND" in again.text
        acked = {a["id"]: a for a in await _alerts(http, mesh)}[target]
        assert acked["acked_by"] == "admin" and acked["acked_at"] > 0


def _delivered() -> set[str]:
    return {
        json.loads(body)["id"]
        for headers, body in _Webhook.received
        if headers.get("a2a-broker-alert-id") in _Webhook.failed_once
    }


def _audit_alerts(folder: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in folder.rglob("audit-*.jsonl"):
        for line in audit_text(path).splitlines():
            record = json.loads(line)
            if record.get("kind") == "alert":
                found[record["detail"]["alert.id"]] = record
    return found


def _alerts_metric(http: httpx.AsyncClient, mesh: Mesh) -> float:
    total = 0.0
    for url in mesh.brokers:
        text = httpx.get(f"{url}/metrics", headers=mesh.admin_headers, timeout=10).text
        for family in text_string_to_metric_families(text):
            total += sum(s.value for s in family.samples if s.name == "a2a_broker_alerts_total")
    return total

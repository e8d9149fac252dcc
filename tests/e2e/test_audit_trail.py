"""Every mediated request leaves exactly the audit records it should, and the log verifies.

The session broker writes its chain under its config folder (var/audit). Each answer carries
A2A-Broker-Request-Id, which names the request's records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from typing import Any

import httpx

from testkit.audit_files import audit_text
from testkit.procs import REPO_ROOT

from .conftest import Broker, Caller
from .wire import jsonrpc, sse_events, user_message

REQUEST_ID = "a2a-broker-request-id"


def _records(broker: Broker) -> list[dict[str, Any]]:
    folder = broker.log.parent / "var" / "audit"
    return [
        json.loads(line)
        for path in sorted(folder.glob("audit-*.jsonl"))
        for line in audit_text(path).splitlines()
    ]


def _of(broker: Broker, request_id: str) -> list[dict[str, Any]]:
    return [r for r in _records(broker) if r["request_id"] == request_id]


async def _settled(broker: Broker, request_id: str, count: int) -> list[dict[str, Any]]:
    """The request's records once ``count`` are there (outcomes are appended just after the
    answer), bounded."""
    for _ in range(100):
        found = _of(broker, request_id)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)  # the outcome append runs beside the answer
    return _of(broker, request_id)


async def test_forwarded_request_has_its_decision_and_outcome(
    broker: Broker, alice: Caller, alice_http: httpx.AsyncClient
) -> None:
    body = {"message": user_message("audited")}
    response = await jsonrpc(alice_http, broker.jsonrpc_url("echo"), "SendMessage", body)
    rid = response.headers[REQUEST_ID]
    forward, outcome = await _settled(broker, rid, 2)
    assert (forward["detail"]["phase"], outcome["detail"]["phase"]) == ("forward", "outcome")
    for record in (forward, outcome):
        assert record["kind"] == "request" and record["decision"] == "allow"
        assert (record["caller"], record["target"], record["operation"]) == (
            "alice",
            "echo",
            "SendMessage",
        )
        assert record["chain"] == ["alice"] and record["tree"]
        sent = response.request.content
        assert record["request_digest"] == "sha256:" + hashlib.sha256(sent).hexdigest()
    assert forward["detail"]["token.jti"] and forward["seq"] < outcome["seq"]
    assert outcome["status"] == 200
    assert outcome["response_digest"] == "sha256:" + hashlib.sha256(response.content).hexdigest()
    assert alice.credential not in json.dumps(_records(broker))  # never a secret


async def test_streamed_request_outcome_covers_the_whole_stream(
    broker: Broker, alice_http: httpx.AsyncClient
) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "SendStreamingMessage",
        "params": {"message": user_message("audited stream")},
    }
    response, events = await sse_events(
        alice_http, "POST", broker.jsonrpc_url("echo"), json=body, headers={"A2A-Version": "1.0"}
    )
    assert len(events) >= 2
    forward, outcome = await _settled(broker, response.headers[REQUEST_ID], 2)
    assert forward["operation"] == outcome["operation"] == "SendStreamingMessage"
    assert outcome["response_digest"].startswith("sha256:")


async def test_refusals_are_one_record_each(broker: Broker, http: httpx.AsyncClient) -> None:
    unknown = await jsonrpc(
        http,
        broker.jsonrpc_url("nobody"),
        "GetTask",
        {"id": "x"},
        headers=broker.callers["alice"].headers,
    )
    wrong = await jsonrpc(
        http,
        broker.jsonrpc_url("echo"),
        "GetTask",
        {"id": "x"},
        headers={"Authorization": "Bearer a2ab_not-a-credential"},
    )
    (refused,) = await _settled(broker, unknown.headers[REQUEST_ID], 1)
    assert (refused["kind"], refused["decision"], refused["reason"]) == (
        "request",
        "deny",
        "AGENT_NOT_FOUND",
    )
    (auth,) = await _settled(broker, wrong.headers[REQUEST_ID], 1)
    assert (auth["kind"], auth["reason"], auth["caller"]) == (
        "auth.failure",
        "INVALID_CREDENTIAL",
        "",
    )
    assert "a2ab_not-a-credential" not in json.dumps(auth)


def test_the_session_log_verifies(broker: Broker) -> None:
    folder = broker.log.parent / "var" / "audit"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "audit",
            "verify",
            str(folder),
            "--keys",
            f"{broker.url}/.well-known/jwks.json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout


def test_audit_search_and_tail_from_the_shell(broker: Broker) -> None:
    folder = str(broker.log.parent / "var" / "audit")
    for command in (["search", folder, "--agent", "alice"], ["tail", folder, "-n", "3"]):
        done = subprocess.run(
            [sys.executable, "-m", "broker", "audit", *command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert records
        if command[0] == "search":
            assert all("alice" in (r["caller"], r["target"], *r["chain"]) for r in records)
        else:
            assert len(records) == 3

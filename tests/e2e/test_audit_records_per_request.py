"""Every request a broker mediated left exactly the audit records it should.

The broker's access log has one line per mediated request; the audit must hold, for each, either
one refusal record, or one decision (phase forward) and one outcome. Nothing more, nothing less.

The broker is this test's own (configured as the session broker, in its own folder), so its
log and audit hold exactly the traffic below, whatever ran before: unary and streamed sends on
both bindings, task reads and cancels, and the refusals (no or a wrong credential, an unknown
agent or task, a body too large or too deep, bad JSON) and upstream failures (down, hanging,
garbage, forged answers, broken streams) the other e2e tests provoke one by one.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testkit.audit_files import audit_text
from testkit.brokers import BrokerProcess, start_broker
from testkit.procs import free_port

from .conftest import (
    ECHO_UPSTREAM_TOKEN,
    ECHO_UPSTREAM_TOKEN_ENV,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    Upstream,
    _broker_config,
    _cards_to_register,
    register_all,
)
from .wire import A2A_V1, jsonrpc, jsonrpc_request, sse_events, user_message

GARBAGE = ("html", "badjson", "500", "rpc418", "forge")
BROKEN_STREAMS = ("ssebad", "sseforge")


@pytest.fixture(scope="module")
def own_broker(
    upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerProcess, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("audit-per-request")
    env = {ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN}
    with start_broker(_broker_config(free_port()), log_dir=folder, env=env) as broker:
        yield broker, register_all(broker, _cards_to_register(upstreams))


def _access_lines(broker: BrokerProcess) -> list[dict[str, object]]:
    lines = broker.log.read_text().splitlines()
    return [json.loads(line) for line in lines if '"event":"mediated"' in line]


def _phases(broker: BrokerProcess) -> dict[str, collections.Counter[str]]:
    phases: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in (broker.config.parent / "var" / "audit").glob("audit-*.jsonl"):
        for line in audit_text(path).splitlines():
            record = json.loads(line)
            if record["request_id"]:
                phases[record["request_id"]][record["detail"]["phase"]] += 1
    return phases


def _mismatches(broker: BrokerProcess) -> list[str]:
    phases = _phases(broker)
    wrong = []
    for line in _access_lines(broker):
        rid = str(line["request_id"])
        seen = phases.get(rid, collections.Counter())
        forwarded = seen["forward"] > 0
        expected = {"forward": 1, "outcome": 1} if forwarded else {"refused": 1}
        if dict(seen) != expected:
            wrong.append(f"{rid} ({line.get('operation')}, {line.get('error')}): {dict(seen)}")
    return wrong


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


async def _traffic(broker: BrokerProcess, credentials: dict[str, str]) -> None:
    """A mix of what callers do, forwarded and refused, on both bindings."""
    alice = {"Authorization": f"Bearer {credentials['alice']}"}
    as_alice = {**A2A_V1, **alice}
    send = {"message": user_message("audit me")}
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:

        async def rpc(agent: str, method: str, params: Any, headers: Any = alice) -> Any:
            return await jsonrpc(http, broker.jsonrpc_url(agent), method, params, headers=headers)

        sent = [await rpc("echo", "SendMessage", send) for _ in range(30)]
        tasks = [r.json()["result"]["task"]["id"] for r in sent[:5]]
        for task in tasks:
            await rpc("echo", "GetTask", {"id": task})
            await rpc("echo", "CancelTask", {"id": task})  # completed: the agent refuses
        await rpc("echo", "ListTasks", {})
        for _ in range(10):
            body = jsonrpc_request("SendStreamingMessage", send)
            await sse_events(http, "POST", broker.jsonrpc_url("echo"), json=body, headers=as_alice)
        rest = broker.rest_url("echo")
        for _ in range(20):
            await http.post(f"{rest}/message:send", json=send, headers=as_alice)
        for task in tasks:
            await http.get(f"{rest}/tasks/{task}", headers=as_alice)
        for _ in range(5):
            await sse_events(http, "POST", f"{rest}/message:stream", json=send, headers=as_alice)
        # Refused before anything is forwarded.
        for _ in range(5):
            await rpc("echo", "SendMessage", send, headers={})
            await rpc("echo", "SendMessage", send, headers={"Authorization": "Bearer nope"})
            await rpc("nobody", "SendMessage", send)
            await rpc("echo", "GetTask", {"id": "no-such-task"})
        for _ in range(2):
            await http.post(broker.jsonrpc_url("echo"), content=b"{not json", headers=as_alice)
            big = {"message": user_message("x" * (MAX_BODY_BYTES + 1024))}
            await rpc("echo", "SendMessage", big)
            deep = {"message": user_message("deep", metadata=_nested(MAX_JSON_DEPTH + 4))}
            await rpc("echo", "SendMessage", deep)
        # Forwarded, and the upstream fails.
        for _ in range(2):
            await rpc("down", "SendMessage", send)
            await rpc("hang", "SendMessage", send)
            for mode in GARBAGE:
                await rpc(f"garbage-{mode}", "SendMessage", send)
            for mode in BROKEN_STREAMS:
                body = jsonrpc_request("SendStreamingMessage", send)
                url = broker.jsonrpc_url(f"garbage-{mode}")
                await sse_events(http, "POST", url, json=body, headers=as_alice)


def test_every_mediated_request_has_exactly_its_records(
    own_broker: tuple[BrokerProcess, dict[str, str]],
) -> None:
    broker, credentials = own_broker
    asyncio.run(_traffic(broker, credentials))
    assert len(_access_lines(broker)) > 100  # the whole mix, not a sample
    deadline = time.monotonic() + 5
    while (wrong := _mismatches(broker)) and time.monotonic() < deadline:
        time.sleep(0.1)  # outcomes of the last streams are appended just after they end
    assert not wrong, "\n".join(wrong[:20])
    kinds = collections.Counter(k for seen in _phases(broker).values() for k in seen)
    assert kinds["forward"] > 50 and kinds["refused"] > 20, kinds  # both kinds, many of each

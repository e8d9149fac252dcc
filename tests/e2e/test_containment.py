"""Containing a failing agent: circuit breaker, bulkhead, stale keep-alive connections (issue 12).

* The breaker: the hopper mesh (``mesh.py``: two brokers on one Redis, real a2a-sdk agents calling
  each other through the broker) with a chain alice → a → b → c, where c is broken on purpose
  (HTTP 500). b's calls to c fail until c's breaker opens; then the broker refuses them at once
  with UPSTREAM_CIRCUIT_OPEN and c sees nothing, while the rest of the mesh works. Healed, c gets
  one probe once the breaker's cool-down has passed, and the circuit closes.
* The bulkhead: ``gated-capped`` (the session broker's gated agent, capped at
  ``CAPPED_CONCURRENCY`` calls in flight) holds calls at its gate; the next is refused
  UPSTREAM_BULKHEAD_FULL, other agents are not affected, and released calls free their places.
* Stale connections: the echo agent behind ``StaleProxy``, which closes the broker's pooled
  keep-alive connection as the next request arrives. GetTask (both bindings) is sent again and
  answered; SendMessage is not sent again, and fails UPSTREAM_UNREACHABLE.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from a2a.types import TaskState
from stale_proxy import StaleProxy

from broker.errors import (
    UpstreamBadResponseError,
    UpstreamBulkheadFullError,
    UpstreamCircuitOpenError,
    UpstreamUnreachableError,
)

from .conftest import CAPPED_CONCURRENCY, Broker, Upstream, _static_card
from .mesh import Mesh, hop_reply, new_marker, originate, plan, start_mesh
from .sdk import client_for, send_request, state_of, unique_text
from .wire import A2A_V1, assert_jsonrpc_error, jsonrpc, recorded_requests, user_message

AGENTS = ["a", "b", "c", "d"]
FAILURES, OPEN_S = 3, 1.0
POLICY = "\n".join(
    [
        "g, alice, role:user",
        *(f"g, {name}, role:agent" for name in AGENTS),
        *(f"g2, {name}, group:mesh" for name in AGENTS),
        "p, role:user, *, originate, allow",
        "p, role:user, group:mesh, SendMessage:*, allow",
        "p, role:agent, group:mesh, SendMessage:*, allow",
        "",
    ]
)
CONTAINMENT = {"containment.breaker": {"failures": FAILURES, "window_s": 60.0, "open_s": OPEN_S}}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("containment")
    with start_mesh(
        folder, redis_url, agents=AGENTS, callers=["alice"], policy=POLICY, tables=CONTAINMENT
    ) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        yield client


async def _fault(http: httpx.AsyncClient, mesh: Mesh, action: str, agent: str) -> None:
    response = await http.post(f"{mesh.hopper}/_{action}", params={"name": agent, "mode": "500"})
    response.raise_for_status()


async def _hits(http: httpx.AsyncClient, mesh: Mesh, agent: str) -> int:
    return int((await http.get(f"{mesh.hopper}/_hits", params={"name": agent})).json())


async def _b_to_c(
    http: httpx.AsyncClient, mesh: Mesh, marker: str, last: str = "c"
) -> dict[str, Any]:
    """alice → a → b → ``last``: what b reported of its call to ``last`` (a and b must be ok)."""
    reply = await hop_reply(http, mesh, "alice", "a", plan(marker, "b", last))
    [at_b] = reply["results"]
    assert at_b["ok"] and at_b["state"] == "TASK_STATE_COMPLETED", at_b
    [at_last] = at_b["reply"]["results"]
    return dict(at_last)


async def test_a_failing_agent_deep_in_a_chain_trips_its_own_breaker_and_recovers(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("breaker")
    assert (await _b_to_c(http, mesh, marker))["ok"]  # c works at first
    await _fault(http, mesh, "break", "c")
    try:
        for _ in range(FAILURES):  # each failure reaches c and comes back to b as an error
            failed = await _b_to_c(http, mesh, marker)
            assert failed["reason"] == UpstreamBadResponseError.reason, failed
        reached_c = await _hits(http, mesh, "c")

        # Open: b's next call to c is refused by the broker, which does not even ask c.
        refused = await _b_to_c(http, mesh, marker)
        assert (refused["code"], refused["reason"]) == (
            UpstreamCircuitOpenError.code,
            UpstreamCircuitOpenError.reason,
        ), refused
        # Every caller of c gets it, with the time to wait.
        direct = await originate(http, mesh, "alice", "c", plan(marker))
        error = assert_jsonrpc_error(direct, UpstreamCircuitOpenError)
        assert error["data"][0]["metadata"] == {"agent": "c"}
        assert 1 <= int(direct.headers["retry-after"]) <= OPEN_S + 1
        assert await _hits(http, mesh, "c") == reached_c

        # The rest of the mesh is unaffected: a and b answered all along, and b reaches d.
        assert (await _b_to_c(http, mesh, marker, last="d"))["ok"]
    finally:
        await _fault(http, mesh, "heal", "c")

    # c is back: after the cool-down one probe goes through, succeeds, and closes the circuit.
    await asyncio.sleep(OPEN_S)
    assert (await _b_to_c(http, mesh, marker))["ok"]
    assert (await _b_to_c(http, mesh, marker))["ok"]
    assert await _hits(http, mesh, "c") == reached_c + 2


# --- the bulkhead -------------------------------------------------------------------------------


async def _send(http: httpx.AsyncClient, broker: Broker, agent: str, text: str) -> httpx.Response:
    return await jsonrpc(
        http, broker.jsonrpc_url(agent), "SendMessage", {"message": user_message(text)}
    )


async def _held(http: httpx.AsyncClient, gated: Upstream, text: str) -> None:
    """Return once the gated agent holds the task of ``text`` at its gate."""
    response = await http.get(f"{gated.url}/_gates/{text}/waiting", timeout=30)
    assert response.status_code == 200, response.text


async def test_the_bulkhead_refuses_the_call_past_the_agents_cap_and_only_that_agent(
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice_http: httpx.AsyncClient,
    http: httpx.AsyncClient,
) -> None:
    gated = upstreams["gated"]
    held = [unique_text(f"capped-{i}") for i in range(CAPPED_CONCURRENCY)]
    # One of the calls in flight is a stream: it holds its place until it ends.
    streaming = await client_for(
        alice_http, broker.agent_url("gated-capped"), "JSONRPC", streaming=True
    )
    stream = streaming.send_message(send_request(held[0]))
    first = await anext(stream)
    assert state_of(first) == TaskState.TASK_STATE_SUBMITTED
    unary = asyncio.create_task(_send(alice_http, broker, "gated-capped", held[1]))
    for text in held:
        await _held(http, gated, text)

    extra = unique_text("capped-extra")
    refused = await _send(alice_http, broker, "gated-capped", extra)
    error = assert_jsonrpc_error(refused, UpstreamBulkheadFullError)
    assert error["data"][0]["metadata"] == {
        "agent": "gated-capped",
        "limit": str(CAPPED_CONCURRENCY),
    }
    assert refused.headers["retry-after"] == "1"
    assert await recorded_requests(http, gated.url, extra) == []  # never forwarded
    # Another agent, even one on the very same upstream, is not held back.
    other = unique_text("uncapped")
    uncapped = asyncio.create_task(_send(alice_http, broker, "gated", other))
    await _held(http, gated, other)
    (await http.post(f"{gated.url}/_gates/{other}/release")).raise_for_status()
    answer = (await asyncio.wait_for(uncapped, 10)).json()
    assert answer["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", answer

    for text in held:
        (await http.post(f"{gated.url}/_gates/{text}/release")).raise_for_status()
    assert (await asyncio.wait_for(unary, 10)).json()["result"]["task"]["status"]["state"] == (
        "TASK_STATE_COMPLETED"
    )
    rest = [event async for event in stream]
    assert state_of(rest[-1]) == TaskState.TASK_STATE_COMPLETED

    # Both places are free again.
    again = [unique_text(f"capped-again-{i}") for i in range(CAPPED_CONCURRENCY)]
    calls = [asyncio.create_task(_send(alice_http, broker, "gated-capped", t)) for t in again]
    for text in again:
        await _held(http, gated, text)
        (await http.post(f"{gated.url}/_gates/{text}/release")).raise_for_status()
    for call in calls:
        assert (await asyncio.wait_for(call, 10)).json()["result"]["task"]["id"]


# --- stale keep-alive connections ---------------------------------------------------------------


@pytest.fixture
async def stale_echo(
    upstreams: dict[str, Upstream], admin_http: httpx.AsyncClient
) -> AsyncIterator[tuple[str, StaleProxy]]:
    """An agent of its own: the echo agent behind a StaleProxy."""
    proxy = StaleProxy(int(upstreams["echo"].url.rsplit(":", 1)[1]))
    await proxy.start()
    name = f"stale-{uuid.uuid4().hex[:10]}"
    response = await admin_http.post(
        "/agents", json={"name": name, "card": _static_card(name, proxy.url)}
    )
    assert response.status_code == 201, response.text
    try:
        yield name, proxy
    finally:
        await admin_http.delete(f"/agents/{name}")
        await proxy.stop()


async def test_reads_on_a_stale_pooled_connection_are_sent_again_and_sends_never(
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice_http: httpx.AsyncClient,
    http: httpx.AsyncClient,
    stale_echo: tuple[str, StaleProxy],
) -> None:
    agent, proxy = stale_echo
    created = await _send(alice_http, broker, agent, unique_text("stale"))
    task_id = created.json()["result"]["task"]["id"]

    # GetTask over JSON-RPC is a POST: the broker sends it again on a fresh connection.
    proxy.arm()
    got = await jsonrpc(alice_http, broker.jsonrpc_url(agent), "GetTask", {"id": task_id})
    assert got.json()["result"]["id"] == task_id, got.text
    assert proxy.dropped == 1
    # Over HTTP+JSON it is a GET.
    proxy.arm()
    rest = await alice_http.get(f"{broker.rest_url(agent)}/tasks/{task_id}", headers=A2A_V1)
    assert rest.status_code == 200 and rest.json()["id"] == task_id, rest.text
    assert proxy.dropped == 2

    # A send is never sent twice: the caller is told, the agent never saw it.
    proxy.arm()
    text = unique_text("stale-send")
    failed = await _send(alice_http, broker, agent, text)
    assert_jsonrpc_error(failed, UpstreamUnreachableError)
    assert proxy.dropped == 3
    assert await recorded_requests(http, upstreams["echo"].url, text) == []

"""Once the agent has answered, the answer reaches the caller, whatever the store does then.

Issue 12: Redis died after an agent completed a SendMessage, the task-route write failed and the
caller got a retryable ``503 STORE_UNAVAILABLE`` for a side effect that had already happened,
the call was never charged, and streams ended with a truncated chunked body.

Here the fault lands exactly between the agent's answer and the broker's writes that follow
it, with no timing guess: the ``held`` agent (``tests/e2e/agents.py``) holds each request before
it does anything and says so (``GET /_gates/{text}/waiting``). By then the broker has made every
write that comes before forwarding (credentials, budget reservation, audit). The test then kills
the broker's redis-server (SIGKILL; it persists to an fsynced append-only file, as production
runs it) or stops it (SIGSTOP: a stalled server, whose commands time out), and only then lets
the agent answer. The broker must relay the agent's answer (a unary task, or every event of the
stream and a clean end), and once Redis is back: charge the call exactly once, record the
task's route for its owner (who can GetTask it), on both bindings, with the real a2a-sdk client.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from a2a.types import GetTaskRequest, StreamResponse, Task, TaskState

from testkit.brokers import launch_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import all_stopped, closed_url, free_port
from testkit.redis_server import RedisServer

from .conftest import _static_card, launch_agent
from .sdk import client_for, events_until_working, remaining_events, send_request, unique_text

AGENT, GATED, OWNER = "held", "gated", "owner"
PREFIX = "outage"
CALLS_PER_DAY = 1000
ANSWER_TIMEOUT_S = 20.0
LEDGER_WAIT_S = 10.0


@dataclass
class Rig:
    broker: str
    agent: str  # the held agent's own URL (its gates)
    gated: str  # the gated agent's own URL: it reports WORKING, then waits at its gate
    admin_headers: dict[str, str]
    owner_headers: dict[str, str]
    redis: RedisServer
    log: Path

    async def held(self, http: httpx.AsyncClient, text: str) -> None:
        """Return once the agent holds the request carrying ``text``."""
        response = await http.get(f"{self.agent}/_gates/{text}/waiting", timeout=30)
        assert response.status_code == 200, response.text

    async def release(self, http: httpx.AsyncClient, text: str) -> None:
        response = await http.post(f"{self.agent}/_gates/{text}/release")
        assert response.status_code == 200, response.text

    async def budget(self, http: httpx.AsyncClient) -> dict[str, Any]:
        response = await http.get(
            f"{self.broker}/admin/budgets", params={"agent": OWNER}, headers=self.admin_headers
        )
        assert response.status_code == 200, response.text
        [budget] = response.json()["budgets"]
        return dict(budget)

    async def settled_budget(self, http: httpx.AsyncClient) -> dict[str, Any]:
        """The owner's budget once nothing is reserved (bounded wait: the late settle lands
        within a retry interval of Redis answering again)."""
        deadline = time.monotonic() + LEDGER_WAIT_S
        while True:
            budget = await self.budget(http)
            if budget["reserved"] == 0 or time.monotonic() > deadline:
                return budget
            await asyncio.sleep(0.1)

    def route_owner(self, task_id: str) -> str | None:
        """The owner Redis holds for the task's route (None: no route)."""
        key = f"{PREFIX}:route:{{{len(AGENT)}:{AGENT}:{task_id}}}"
        with redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5) as r:
            raw = r.get(key)
        return None if raw is None else raw.decode()  # a route's value is its owner

    def unchecked_streams(self) -> int:
        """How often the broker logged a stream going on without its recheck (store down)."""
        return self.log.read_text(errors="replace").count("goes on unchecked")

    def agent_requests(self, text: str) -> int:
        """How many requests carrying ``text`` reached the agent."""
        recorded = httpx.get(f"{self.agent}/_recorded", trust_env=False).json()
        return sum(text.encode() in base64.b64decode(r["body_b64"]) for r in recorded)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("outage")
    store = RedisServer(data_dir=folder / "redis")
    config = BrokerConfig(port=free_port()).set("server", log_level="info")
    config.use_redis(store.url, key_prefix=PREFIX).set("audit", dir=folder / "audit", fsync=False)
    config.set("limits", upstream_timeout_s=15.0, sse_idle_timeout_s=15.0)
    config.set("budgets", reservation_ttl_s=60)
    config.set("budgets.agents", **{OWNER: [budget("calls", "day", CALLS_PER_DAY)]})
    with all_stopped([store]), all_stopped([]) as children:
        store.start()
        agent, gated = launch_agent(AGENT, folder), launch_agent(GATED, folder)
        broker = launch_broker(config, log_dir=folder)
        children.extend([agent, gated, broker])
        agent.wait_ready()
        gated.wait_ready()
        broker.wait_ready("/readyz")
        cards = {AGENT: agent.url, GATED: gated.url, OWNER: closed_url()}
        credentials = {
            name: broker.register(name, _static_card(name, url)) for name, url in cards.items()
        }
        yield Rig(
            broker=broker.url,
            agent=agent.url,
            gated=gated.url,
            admin_headers=broker.admin_headers,
            owner_headers={"Authorization": f"Bearer {credentials[OWNER]}"},
            redis=store,
            log=broker.log,
        )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        yield client


def _final_task(events: list[StreamResponse]) -> Task:
    """The task as the caller knows it at the end: the unary answer, or the stream's events
    folded (task snapshot, then status and artifact updates)."""
    task = Task()
    for event in events:
        if event.HasField("task"):
            task.CopyFrom(event.task)
        elif event.HasField("status_update"):
            task.status.CopyFrom(event.status_update.status)
        elif event.HasField("artifact_update"):
            task.artifacts.append(event.artifact_update.artifact)
    return task


class Fault:
    """Takes the broker's redis-server away between the agent's answer and the broker's writes."""

    def __init__(self, kind: str, store: RedisServer) -> None:
        self.kind = kind
        self.store = store

    def begin(self) -> None:
        assert self.store.process is not None
        if self.kind == "kill":
            self.store.kill()  # SIGKILL: connections refused at once
        else:
            self.store.pause()  # stalled: commands time out

    def end(self) -> None:
        assert self.store.process is not None
        if self.kind == "kill":
            self.store.start()  # reloads its append-only file
        else:
            self.store.resume()


CASES = [
    pytest.param("kill", "JSONRPC", False, id="kill-jsonrpc-unary"),
    pytest.param("kill", "JSONRPC", True, id="kill-jsonrpc-stream"),
    pytest.param("kill", "HTTP+JSON", False, id="kill-rest-unary"),
    pytest.param("kill", "HTTP+JSON", True, id="kill-rest-stream"),
    pytest.param("pause", "JSONRPC", False, id="pause-jsonrpc-unary"),
    pytest.param("pause", "HTTP+JSON", True, id="pause-rest-stream"),
]


@pytest.mark.parametrize(("fault", "binding", "streaming"), CASES)
async def test_the_answer_reaches_its_caller_and_is_charged_once_when_redis_fails_after_it(
    rig: Rig, http: httpx.AsyncClient, fault: str, binding: str, streaming: bool
) -> None:
    text = unique_text(f"outage-{fault}")
    before = await rig.budget(http)
    outage = Fault(fault, rig.redis)
    async with httpx.AsyncClient(headers=rig.owner_headers, trust_env=False, timeout=30) as owner:
        client = await client_for(
            owner, f"{rig.broker}/agents/{AGENT}", binding, streaming=streaming
        )

        async def send() -> list[StreamResponse]:
            return [event async for event in client.send_message(send_request(text))]

        sending = asyncio.create_task(send())
        began = False
        try:
            await rig.held(http, text)  # every write before forwarding is done
            await asyncio.to_thread(outage.begin)
            began = True
            await rig.release(http, text)  # the agent answers into the outage
            events = await asyncio.wait_for(sending, ANSWER_TIMEOUT_S)
        finally:
            sending.cancel()
            if began:
                await asyncio.to_thread(outage.end)

        # The caller has the agent's answer: the completed task, every event of the stream.
        task = _final_task(events)
        assert task.status.state == TaskState.TASK_STATE_COMPLETED, events
        assert [p.text for a in task.artifacts for p in a.parts] == [f"echo: {text}"], events
        if streaming:
            assert events[0].HasField("task") and len(events) >= 3, events
        # ... and the broker met the outage at the route write (its own log line says so).
        deferred = f"route of task {task.id} at {AGENT} for {OWNER} not recorded yet"
        assert deferred in rig.log.read_text(errors="replace"), rig.log.read_text()[-3000:]

        # Redis is back: the owner reads its own task through the broker.
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.id == task.id and got.status.state == TaskState.TASK_STATE_COMPLETED

    assert rig.route_owner(task.id) == OWNER
    after = await rig.settled_budget(http)
    assert after["reserved"] == 0, after
    assert after["used"] == before["used"] + 1, (before, after)  # charged, and once
    assert rig.agent_requests(text) == 1  # the call was made once: nobody was told to retry it


async def test_a_stream_goes_on_through_a_redis_outage_and_ends_cleanly(
    rig: Rig, http: httpx.AsyncClient
) -> None:
    """The once-a-second recheck of an open stream cannot read Redis: the stream goes on (a stop
    is written to the store that is down), the caller gets every event and a clean end, and
    the call is charged once Redis is back."""
    text = unique_text("mid-stream")
    before = await rig.budget(http)
    unchecked = rig.unchecked_streams()
    async with httpx.AsyncClient(headers=rig.owner_headers, trust_env=False, timeout=30) as owner:
        client = await client_for(owner, f"{rig.broker}/agents/{GATED}", "JSONRPC", streaming=True)
        events = client.send_message(send_request(text))
        first = await events_until_working(events)  # the route is claimed, the stream is open
        await asyncio.to_thread(rig.redis.kill)
        try:
            # Wait (bounded) for the broker to meet the outage at a recheck of this stream.
            async with asyncio.timeout(15):
                while rig.unchecked_streams() == unchecked:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.1)
            (await http.post(f"{rig.gated}/_gates/{text}/release")).raise_for_status()
            rest = await remaining_events(events)
        finally:
            await asyncio.to_thread(rig.redis.start)
        task = _final_task([*first, *rest])
        assert task.status.state == TaskState.TASK_STATE_COMPLETED, rest
        assert [p.text for a in task.artifacts for p in a.parts] == [f"echo: {text}"]
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.status.state == TaskState.TASK_STATE_COMPLETED
    after = await rig.settled_budget(http)
    assert (after["used"], after["reserved"]) == (before["used"] + 1, 0), (before, after)

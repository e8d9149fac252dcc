"""The demo researcher and writer, called directly (no broker) with the real a2a-sdk client.

Each agent runs as its own process on a free port, exactly as the launcher starts it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import get_artifact_text, get_message_text
from a2a.types import Artifact, Message, Part, Role, SendMessageRequest, StreamResponse, TaskState

from broker.demo.agents import load_card
from testkit.procs import Process, free_port, local_url, python_module

pytestmark = pytest.mark.e2e

BINDINGS = ["JSONRPC", "HTTP+JSON"]
TOPIC = "tide pools"


@dataclass(frozen=True)
class Agent:
    name: str
    port: int
    running: Process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _serve(name: str) -> Iterator[Agent]:
    port = free_port()
    command = python_module("broker.demo.agents", name, "--port", str(port))
    card_url = f"{local_url(port)}/.well-known/agent-card.json"
    # Unbuffered: the test reads the agent's request log while it runs.
    with Process.start(
        command, ready_url=card_url, name=name, env={"PYTHONUNBUFFERED": "1"}
    ) as running:
        yield Agent(name, port, running)


@pytest.fixture(scope="module")
def researcher() -> Iterator[Agent]:
    yield from _serve("researcher")


@pytest.fixture(scope="module")
def writer() -> Iterator[Agent]:
    yield from _serve("writer")


async def _send(agent: Agent, binding: str, streaming: bool, text: str) -> list[StreamResponse]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        config = ClientConfig(
            streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding]
        )
        client = await create_client(agent.base_url, config)
        message = Message(
            role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)]
        )
        request = SendMessageRequest(message=message)
        return [event async for event in client.send_message(request)]


def _final_state(events: list[StreamResponse]) -> int:
    last = events[-1]
    return last.task.status.state if last.HasField("task") else last.status_update.status.state


def _artifacts(events: list[StreamResponse]) -> list[Artifact]:
    if len(events) == 1:  # unary: the whole task in one answer
        return list(events[0].task.artifacts)
    return [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]


def _status_texts(events: list[StreamResponse]) -> list[str]:
    updates = [e.status_update for e in events if e.HasField("status_update")]
    return [get_message_text(u.status.message) for u in updates]


def _assert_called(agent: Agent, binding: str, streaming: bool) -> None:
    """The agent's own request log (one JSON line per request, path decoded) shows the request
    arrived on the binding's URL."""
    if binding == "JSONRPC":
        path = "/a2a/jsonrpc"
    else:
        path = "/a2a/rest/message:stream" if streaming else "/a2a/rest/message:send"
    requests = [
        json.loads(line)
        for line in agent.running.output().splitlines()
        if line.startswith('{"event": "request"')
    ]
    assert {"event": "request", "method": "POST", "path": path, "status": 200} in requests


@pytest.mark.parametrize("name", ["researcher", "writer"])
def test_served_card_is_the_file_card_with_the_given_port(
    name: str, request: pytest.FixtureRequest
) -> None:
    agent: Agent = request.getfixturevalue(name)
    answer = httpx.get(f"{agent.base_url}/.well-known/agent-card.json")

    card = parse_agent_card(answer.json())
    assert card == load_card(name, port=agent.port)
    assert [i.url for i in card.supported_interfaces] == [
        f"{agent.base_url}/a2a/jsonrpc",
        f"{agent.base_url}/a2a/rest",
    ]


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
@pytest.mark.parametrize("binding", BINDINGS)
async def test_researcher_returns_findings(
    researcher: Agent, binding: str, streaming: bool
) -> None:
    events = await _send(researcher, binding, streaming, TOPIC)

    assert _final_state(events) == TaskState.TASK_STATE_COMPLETED
    [artifact] = _artifacts(events)
    assert artifact.name == "findings"
    findings = get_artifact_text(artifact).splitlines()
    assert len(findings) == 3
    assert all(line.startswith("- ") and TOPIC in line for line in findings)
    _assert_called(researcher, binding, streaming)


@pytest.mark.parametrize("binding", BINDINGS)
async def test_researcher_streams_one_update_per_finding(researcher: Agent, binding: str) -> None:
    events = await _send(researcher, binding, True, TOPIC)

    assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    progress = [
        (index, get_message_text(event.status_update.status.message))
        for index, event in enumerate(events)
        if event.HasField("status_update")
        and get_message_text(event.status_update.status.message).startswith("finding ")
    ]
    assert [text.split(":")[0] for _, text in progress] == [
        "finding 1/3",
        "finding 2/3",
        "finding 3/3",
    ]
    artifact_at = next(i for i, event in enumerate(events) if event.HasField("artifact_update"))
    assert progress[-1][0] < artifact_at


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
@pytest.mark.parametrize("binding", BINDINGS)
async def test_writer_returns_an_article(writer: Agent, binding: str, streaming: bool) -> None:
    brief = f"{TOPIC}\n- They flood twice a day.\n- Anemones live there."
    events = await _send(writer, binding, streaming, brief)

    assert _final_state(events) == TaskState.TASK_STATE_COMPLETED
    [artifact] = _artifacts(events)
    assert artifact.name == "article"
    article = get_artifact_text(artifact)
    assert article.startswith(f"A short note on {TOPIC}\n\n")
    assert "They flood twice a day. Anemones live there." in article
    if streaming:
        assert {"drafting", "polishing"} <= set(_status_texts(events))
    _assert_called(writer, binding, streaming)


@pytest.mark.parametrize("binding", BINDINGS)
async def test_blank_text_is_rejected(writer: Agent, binding: str) -> None:
    events = await _send(writer, binding, False, "   ")

    assert _final_state(events) == TaskState.TASK_STATE_REJECTED

"""A multi-turn task through an approval, end to end: a real broker on Redis, a real a2a-sdk
agent that asks for input once the approved call reaches it, and the real a2a-sdk client.

alice's ``delete-data`` message needs a person's approval (an ``approve`` rule); her task is the
broker's ``approval-…`` task. Once approved, the agent asks "Which table?"
(``TASK_STATE_INPUT_REQUIRED``); alice answers on the same task id and context the broker
showed her, the agent gets its own task id and context in their place, and the task completes,
every answer naming the broker's task. A reply while the approval waits is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.types import GetTaskRequest, StreamResponse, TaskState
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from broker.errors import ApprovalPendingError
from testkit.audit_files import audit_text
from testkit.brokers import BrokerProcess, launch_broker
from testkit.config import BrokerConfig, credential_sha256
from testkit.procs import Service, closed_url, free_port, launch_service, start_services

from .agents import agent_card
from .sdk import client_for, next_event, remaining_events, send_request, state_of, unique_text
from .wire import assert_jsonrpc_error, assert_rest_error, jsonrpc, user_message

OSCAR = f"oscar-{secrets.token_hex(8)}"
POLICY = "\n".join([
    "g, alice, role:user",
    "g2, asker, group:workers",
    "p, role:user, *, originate, allow",
    "p, role:user, group:workers, *, allow",
    "p, role:user, group:workers, SendMessage:delete-data, approve",
    "p, role:user, group:workers, SendStreamingMessage:delete-data, approve",
    "",
])


@dataclass
class Rig:
    broker: BrokerProcess
    asker: Service
    alice: str
    folder: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("approvals-multiturn")
    policy = folder / "policy.csv"
    policy.write_text(POLICY)
    asker = launch_service("tests.e2e.agents", "asker", name="multiturn-asker", log_dir=folder)
    with start_services([asker]):
        config = BrokerConfig(port=free_port()).use_redis(
            redis_url, key_prefix=f"multiturn-{uuid.uuid4().hex[:8]}"
        ).use_policy_file(policy)
        config.set("approvals", ttl_s=60.0)
        config.set("approvals.approvers.oscar", token_sha256=credential_sha256(OSCAR))
        config.set("limits", sse_heartbeat_s=1.0)
        broker = launch_broker(config, log_dir=folder, name="broker",
                               admin_token=secrets.token_urlsafe(24))
        try:
            broker.wait_ready()
            card = httpx.get(f"{asker.url}/.well-known/agent-card.json", trust_env=False).json()
            broker.register("asker", card)
            alice = broker.register("alice", MessageToDict(agent_card("alice", closed_url())))
            yield Rig(broker, asker, alice, folder)
        finally:
            broker.stop()


@pytest.fixture
async def http(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {rig.alice}"}
    async with httpx.AsyncClient(timeout=30, trust_env=False, headers=headers) as client:
        yield client


def delete_data(text: str, **message_fields: Any) -> Any:
    skill = Struct()
    skill.update({"skill": "delete-data"})
    return send_request(text, metadata=skill, **message_fields)


async def approve(rig: Rig, approval: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as plain:
        answer = await plain.post(
            f"{rig.broker.url}/admin/approvals/{approval}",
            headers={"Authorization": f"Bearer {OSCAR}"},
            json={"decision": "approve", "reason": "ticket 4411"},
        )
    assert answer.status_code == 200, answer.text


async def reached_agent(rig: Rig, text: str) -> list[dict[str, Any]]:
    """The message bodies (JSON) that reached the agent holding ``text``."""
    async with httpx.AsyncClient(trust_env=False) as plain:
        requests = (await plain.get(f"{rig.asker.url}/_recorded")).json()
    bodies = [base64.b64decode(r["body_b64"]) for r in requests]
    return [json.loads(b) for b in bodies if text.encode() in b]


def message_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict((body.get("params") or body)["message"])


def ids_in(event: StreamResponse) -> set[str]:
    """Every task id and context id an answer names."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("id", "taskId", "contextId") and isinstance(item, str):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(MessageToDict(event))
    found.discard("")
    return {i for i in found if i.startswith("approval-") or len(i) == 36}


async def task_state(client: Any, task_id: str, until: int, within_s: float = 15) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state == until or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.1)


def audited(rig: Rig, approval: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(rig.folder.rglob("audit-*.jsonl")):
        found += [json.loads(line) for line in audit_text(path).splitlines() if approval in line]
    return found


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_the_caller_answers_the_agents_question_on_the_brokers_task(
    rig: Rig, http: httpx.AsyncClient, binding: str, streaming: bool
) -> None:
    client = await client_for(http, rig.broker.agent_url("asker"), binding, streaming=streaming)
    asked = unique_text("drop old rows")
    events = aiter(client.send_message(delete_data(asked)))
    first = await next_event(events)
    assert state_of(first) == TaskState.TASK_STATE_AUTH_REQUIRED
    approval, shown_context = first.task.id, first.task.context_id
    assert approval.startswith("approval-") and shown_context == approval
    assert await reached_agent(rig, asked) == []
    await approve(rig, approval)
    if streaming:  # the same stream carries the agent's events, under the broker's task
        rest = await remaining_events(events)
        assert state_of(rest[-1]) == TaskState.TASK_STATE_INPUT_REQUIRED
        assert all(ids_in(event) <= {approval} for event in rest), rest
    task = await task_state(client, approval, TaskState.TASK_STATE_INPUT_REQUIRED)
    assert (task.id, task.context_id) == (approval, shown_context)
    assert task.status.message.parts[0].text == "Which table?"
    assert len(await reached_agent(rig, asked)) == 1

    answer = unique_text("the users table")
    reply = send_request(answer, task_id=approval, context_id=shown_context)
    answered = [event async for event in client.send_message(reply)]
    assert state_of(answered[-1]) == TaskState.TASK_STATE_COMPLETED
    assert all(ids_in(event) <= {approval} for event in answered), answered
    done = await task_state(client, approval, TaskState.TASK_STATE_COMPLETED)
    assert done.id == approval
    assert done.artifacts[-1].parts[0].text == f"echo: {answer}"

    [continued] = await reached_agent(rig, answer)
    sent = message_of(continued)
    agent_task, agent_context = sent["taskId"], sent["contextId"]
    assert not agent_task.startswith("approval-") and not agent_context.startswith("approval-")
    assert approval not in json.dumps(continued)
    assert sent["parts"] == [{"text": answer}]
    records = [r for r in audited(rig, approval) if r.get("kind") == "request"
               and r.get("detail", {}).get("approval_task") == approval]
    assert any(r["detail"].get("task_id") == agent_task for r in records), records


async def test_a_reply_that_needs_approval_itself_waits_in_its_own_task_in_the_same_context(
    rig: Rig, http: httpx.AsyncClient
) -> None:
    client = await client_for(http, rig.broker.agent_url("asker"), "HTTP+JSON")
    [held] = [e async for e in client.send_message(delete_data(unique_text("drop")))]
    first = held.task.id
    await approve(rig, first)
    await task_state(client, first, TaskState.TASK_STATE_INPUT_REQUIRED)
    answer = unique_text("the audit table")
    reply = delete_data(answer, task_id=first, context_id=first)
    [again] = [e async for e in client.send_message(reply)]
    second = again.task.id
    assert state_of(again) == TaskState.TASK_STATE_AUTH_REQUIRED and second != first
    assert again.task.context_id == first
    assert await reached_agent(rig, answer) == []
    await approve(rig, second)
    done = await task_state(client, second, TaskState.TASK_STATE_COMPLETED)
    assert (done.id, done.context_id) == (second, first)
    assert done.artifacts[-1].parts[0].text == f"echo: {answer}"
    [continued] = await reached_agent(rig, answer)
    assert first not in json.dumps(continued) and second not in json.dumps(continued)


@pytest.mark.parametrize("binding", ["jsonrpc", "rest"])
async def test_a_reply_while_the_approval_waits_is_refused(
    rig: Rig, http: httpx.AsyncClient, binding: str
) -> None:
    client = await client_for(http, rig.broker.agent_url("asker"), "JSONRPC")
    [held] = [e async for e in client.send_message(delete_data(unique_text("wait")))]
    approval = held.task.id
    params = {"message": user_message("too soon", taskId=approval, contextId=approval)}
    if binding == "jsonrpc":
        refused = await jsonrpc(http, rig.broker.jsonrpc_url("asker"), "SendMessage", params)
        error = assert_jsonrpc_error(refused, ApprovalPendingError)
        assert error["data"][0]["metadata"]["approval_id"] == approval
    else:
        refused = await http.post(f"{rig.broker.rest_url('asker')}/message:send", json=params,
                                  headers={"A2A-Version": "1.0"})
        assert_rest_error(refused, ApprovalPendingError)
    assert await reached_agent(rig, "too soon") == []
    refusals = [r for r in audited(rig, approval)
                if r.get("detail", {}).get("approval_task") == approval]
    assert refusals and all(r["detail"]["phase"] == "refused" for r in refusals), refusals

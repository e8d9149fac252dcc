"""A caller sees only tasks it created.

Bob asking about Alice's task must get exactly the answer he gets for an id that does not exist,
so he cannot even learn that the task is there; ListTasks shows each caller only their own tasks.
"""

from __future__ import annotations

import uuid
from contextlib import aclosing

import httpx
import pytest
from a2a.client import Client
from a2a.types import GetTaskRequest, ListTasksRequest, TaskState
from a2a.utils.errors import TaskNotFoundError as SdkTaskNotFoundError

from broker.errors import TaskNotFoundError

from .conftest import Broker, Upstream
from .sdk import (
    client_for,
    events_until_working,
    remaining_events,
    send_request,
    state_of,
    unique_text,
)
from .wire import A2A_V1, assert_jsonrpc_error, assert_rest_error, sse_events

JSONRPC_TASK_METHODS = ("GetTask", "CancelTask", "SubscribeToTask")
REST_TASK_CALLS = (
    ("GET", "/tasks/{}"),
    ("POST", "/tasks/{}:cancel"),
    ("POST", "/tasks/{}:subscribe"),
)


async def _alice_task(broker: Broker, alice_http: httpx.AsyncClient, binding: str) -> str:
    """A finished task Alice created at the echo agent."""
    client = await client_for(alice_http, broker.agent_url("echo"), binding)
    [event] = [e async for e in client.send_message(send_request(unique_text("alice")))]
    return event.task.id


async def _jsonrpc_answer(
    http: httpx.AsyncClient, broker: Broker, agent: str, method: str, task_id: str
) -> tuple[int, str]:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"id": task_id}}
    response, _ = await sse_events(
        http, "POST", broker.jsonrpc_url(agent), json=body, headers=A2A_V1
    )
    assert_jsonrpc_error(response, TaskNotFoundError, request_id=7)
    return response.status_code, response.text.replace(task_id, "<id>")


async def _rest_answer(
    http: httpx.AsyncClient, broker: Broker, agent: str, call: tuple[str, str], task_id: str
) -> tuple[int, str]:
    method, path = call
    url = broker.rest_url(agent) + path.format(task_id)
    response, _ = await sse_events(http, method, url, headers=A2A_V1)
    assert_rest_error(response, TaskNotFoundError)
    return response.status_code, response.text.replace(task_id, "<id>")


async def _assert_hidden_from_bob(
    broker: Broker, bob_http: httpx.AsyncClient, agent: str, task_id: str
) -> None:
    unknown = str(uuid.uuid4())
    for method in JSONRPC_TASK_METHODS:
        theirs = await _jsonrpc_answer(bob_http, broker, agent, method, task_id)
        assert theirs == await _jsonrpc_answer(bob_http, broker, agent, method, unknown), method
    for call in REST_TASK_CALLS:
        theirs = await _rest_answer(bob_http, broker, agent, call, task_id)
        assert theirs == await _rest_answer(bob_http, broker, agent, call, unknown), call


async def test_finished_task_is_invisible_to_another_caller(
    broker: Broker, alice_http: httpx.AsyncClient, bob_http: httpx.AsyncClient, binding: str
):
    task_id = await _alice_task(broker, alice_http, binding)

    await _assert_hidden_from_bob(broker, bob_http, "echo", task_id)


async def test_running_task_cannot_be_cancelled_or_followed_by_another_caller(
    *,
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice_http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient,
    binding: str,
):
    gated = upstreams["gated"]
    client = await client_for(alice_http, broker.agent_url("gated"), binding, streaming=True)
    key = unique_text("isolation")

    async with aclosing(client.send_message(send_request(key))) as stream:
        task_id = (await events_until_working(stream))[0].task.id
        await _assert_hidden_from_bob(broker, bob_http, "gated", task_id)
        assert (await alice_http.get(f"{gated.url}/_gates")).json()[key] == "waiting"
        await alice_http.post(f"{gated.url}/_gates/{key}/release")
        rest = await remaining_events(stream)

    assert state_of(rest[-1]) == TaskState.TASK_STATE_COMPLETED


async def test_sdk_client_of_another_caller_gets_task_not_found(
    broker: Broker, alice_http: httpx.AsyncClient, bob_http: httpx.AsyncClient, binding: str
):
    task_id = await _alice_task(broker, alice_http, binding)
    bob = await client_for(bob_http, broker.agent_url("echo"), binding)

    with pytest.raises(SdkTaskNotFoundError):
        await bob.get_task(GetTaskRequest(id=task_id))


async def _listed(client: Client) -> dict[str, str]:
    """Task id -> text of the task's first message, for every task ListTasks shows."""
    listed = await client.list_tasks(ListTasksRequest(page_size=100))
    return {t.id: t.history[0].parts[0].text for t in listed.tasks}


async def test_list_tasks_shows_only_the_callers_own_tasks(
    *,
    broker: Broker,
    upstreams: dict[str, Upstream],
    http: httpx.AsyncClient,
    alice_http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient,
    binding: str,
):
    alices = await _alice_task(broker, alice_http, binding)
    bob = await client_for(bob_http, broker.agent_url("echo"), binding)
    [bobs_event] = [e async for e in bob.send_message(send_request(unique_text("bob")))]
    bobs = bobs_event.task.id
    alice = await client_for(alice_http, broker.agent_url("echo"), binding)

    alice_sees = await _listed(alice)
    bob_sees = await _listed(bob)

    assert alices in alice_sees
    assert bobs not in alice_sees
    assert bobs in bob_sees
    # Bob never sent anything but "bob-…" messages, and sees nothing else.
    assert {text.split("-")[0] for text in bob_sees.values()} == {"bob"}
    upstream = await http.get(
        f"{upstreams['echo'].url}/a2a/rest/tasks", params={"pageSize": 100}, headers=A2A_V1
    )
    assert {alices, bobs} <= {t["id"] for t in upstream.json()["tasks"]}

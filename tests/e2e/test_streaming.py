"""Streaming through the broker: events arrive as the agent emits them; cancel and subscribe work.

The gated agent reports WORKING and then blocks until the test opens the task's gate, so a test
that sees WORKING while the gate is still closed has proof the broker did not buffer the stream.
"""

from __future__ import annotations

from contextlib import aclosing

import httpx
from a2a.types import CancelTaskRequest, GetTaskRequest, SubscribeToTaskRequest, TaskState

from .conftest import Broker, Upstream
from .sdk import (
    artifact_texts,
    client_for,
    events_until_working,
    kind_of,
    next_event,
    remaining_events,
    send_request,
    state_of,
    unique_text,
)


async def _gate_state(http: httpx.AsyncClient, gated: Upstream, key: str) -> str | None:
    return (await http.get(f"{gated.url}/_gates")).json().get(key)


async def _release(http: httpx.AsyncClient, gated: Upstream, key: str) -> None:
    response = await http.post(f"{gated.url}/_gates/{key}/release")
    response.raise_for_status()


async def test_streamed_echo_arrives_in_order(
    broker: Broker, alice_http: httpx.AsyncClient, binding: str
):
    client = await client_for(alice_http, broker.agent_url("echo"), binding, streaming=True)
    text = unique_text("stream")

    events = [e async for e in client.send_message(send_request(text))]

    kinds = [kind_of(e) for e in events]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"]
    assert [state_of(e) for e in events if state_of(e) is not None] == [
        TaskState.TASK_STATE_SUBMITTED,
        TaskState.TASK_STATE_WORKING,
        TaskState.TASK_STATE_COMPLETED,
    ]
    assert artifact_texts(events) == [f"echo: {text}"]


async def test_first_event_reaches_caller_while_agent_still_working(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    gated = upstreams["gated"]
    client = await client_for(alice_http, broker.agent_url("gated"), binding, streaming=True)
    key = unique_text("first-event")

    async with aclosing(client.send_message(send_request(key))) as stream:
        first = await events_until_working(stream)
        assert await _gate_state(alice_http, gated, key) == "waiting"

        await _release(alice_http, gated, key)
        rest = await remaining_events(stream)

    assert state_of(first[0]) == TaskState.TASK_STATE_SUBMITTED
    assert artifact_texts(rest) == [f"echo: {key}"]
    assert state_of(rest[-1]) == TaskState.TASK_STATE_COMPLETED


async def test_cancel_through_broker_stops_the_task(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    gated = upstreams["gated"]
    client = await client_for(alice_http, broker.agent_url("gated"), binding, streaming=True)
    key = unique_text("cancel")

    async with aclosing(client.send_message(send_request(key))) as stream:
        task_id = (await events_until_working(stream))[0].task.id
        canceled = await client.cancel_task(CancelTaskRequest(id=task_id))
        rest = await remaining_events(stream)

    assert canceled.status.state == TaskState.TASK_STATE_CANCELED
    assert state_of(rest[-1]) == TaskState.TASK_STATE_CANCELED
    assert await _gate_state(alice_http, gated, key) == "cancelled"
    fetched = await client.get_task(GetTaskRequest(id=task_id))
    assert fetched.status.state == TaskState.TASK_STATE_CANCELED


async def test_subscribe_through_broker_follows_the_task_to_the_end(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    gated = upstreams["gated"]
    client = await client_for(alice_http, broker.agent_url("gated"), binding, streaming=True)
    key = unique_text("subscribe")

    async with aclosing(client.send_message(send_request(key))) as stream:
        task_id = (await events_until_working(stream))[0].task.id
        subscription = client.subscribe(SubscribeToTaskRequest(id=task_id))
        async with aclosing(subscription) as followed:
            snapshot = await next_event(followed)
            await _release(alice_http, gated, key)
            followed_rest = await remaining_events(followed)
        original_rest = await remaining_events(stream)

    assert snapshot.task.id == task_id
    assert snapshot.task.status.state == TaskState.TASK_STATE_WORKING
    for events in (followed_rest, original_rest):
        assert artifact_texts(events) == [f"echo: {key}"]
        assert state_of(events[-1]) == TaskState.TASK_STATE_COMPLETED

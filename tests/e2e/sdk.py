"""The real a2a-sdk client, set up the way a user would: from a URL, over a chosen binding."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, StreamResponse, TaskState

EVENT_TIMEOUT_S = 10.0


async def client_for(
    http: httpx.AsyncClient, agent_url: str, binding: str, *, streaming: bool = False
) -> Client:
    """An SDK client that discovers the card at ``{agent_url}/.well-known/agent-card.json``."""
    config = ClientConfig(
        streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding]
    )
    return await ClientFactory(config).create_from_url(agent_url)


def send_request(text: str, **message_fields: Any) -> SendMessageRequest:
    message = Message(
        role=Role.ROLE_USER,
        message_id=str(uuid.uuid4()),
        parts=[Part(text=text)],
        **message_fields,
    )
    return SendMessageRequest(message=message)


def unique_text(label: str) -> str:
    return f"{label}-{uuid.uuid4()}"


async def next_event(events: AsyncIterator[StreamResponse]) -> StreamResponse:
    """The stream's next event; fails the test instead of hanging if none comes."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        return await anext(events)


async def events_until_working(events: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    """Read a stream up to and including the WORKING status update."""
    seen = []
    while True:
        event = await next_event(events)
        seen.append(event)
        if state_of(event) == TaskState.TASK_STATE_WORKING:
            return seen


async def remaining_events(events: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        return [event async for event in events]


def state_of(event: StreamResponse) -> int | None:
    """The task state an event reports (task snapshot or status update), else None."""
    if event.HasField("task"):
        return event.task.status.state
    if event.HasField("status_update"):
        return event.status_update.status.state
    return None


def kind_of(event: StreamResponse) -> str:
    kind = event.WhichOneof("payload")
    assert kind is not None, f"empty stream event {event}"
    return kind


def artifact_texts(events: list[StreamResponse]) -> list[str]:
    texts = []
    for event in events:
        if event.HasField("artifact_update"):
            texts.extend(p.text for p in event.artifact_update.artifact.parts)
    return texts

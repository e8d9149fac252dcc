"""Unary mediation: the SDK client, given only the broker's URL, reaches the real agent."""

from __future__ import annotations

import json

import httpx
from a2a.client import ClientCallContext
from a2a.types import GetTaskRequest, TaskState

from .conftest import Broker, Caller, Upstream
from .sdk import client_for, send_request, unique_text
from .wire import A2A_V1, jsonrpc_request, recorded_requests, user_message

EXTENSION_URI = "https://example.test/extensions/trace/v1"
UPSTREAM_PATH = {"JSONRPC": "/a2a/jsonrpc", "HTTP+JSON": "/a2a/rest/message:send"}


async def test_card_served_by_broker_points_at_broker(broker: Broker, http: httpx.AsyncClient):
    response = await http.get(f"{broker.agent_url('echo')}/.well-known/agent-card.json")

    assert response.status_code == 200
    interfaces = response.json()["supportedInterfaces"]
    assert {i["protocolBinding"]: i["url"] for i in interfaces} == {
        "JSONRPC": broker.jsonrpc_url("echo"),
        "HTTP+JSON": broker.rest_url("echo"),
    }


async def test_unary_task_completes_through_broker(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    client = await client_for(alice_http, broker.agent_url("echo"), binding)
    text = unique_text("unary")

    [event] = [e async for e in client.send_message(send_request(text))]

    assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [p.text for a in event.task.artifacts for p in a.parts] == [f"echo: {text}"]
    fetched = await client.get_task(GetTaskRequest(id=event.task.id))
    assert fetched.status.state == TaskState.TASK_STATE_COMPLETED
    assert fetched.artifacts == event.task.artifacts
    [seen] = await recorded_requests(alice_http, upstreams["echo"].url, text)
    assert seen["path"] == UPSTREAM_PATH[binding]


async def test_extensions_header_reaches_upstream(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    client = await client_for(alice_http, broker.agent_url("echo"), binding)
    text = unique_text("extensions")
    context = ClientCallContext(service_parameters={"A2A-Extensions": EXTENSION_URI})

    [event] = [e async for e in client.send_message(send_request(text), context=context)]

    assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
    [seen] = await recorded_requests(alice_http, upstreams["echo"].url, text)
    assert ["a2a-extensions", EXTENSION_URI] in seen["headers"]


def _body_with_unknown_fields(binding: str, text: str) -> bytes:
    message = user_message(
        text,
        metadata={"x-trace": {"unknownNested": [1, 2.5, None, True]}},
        futureMessageField={"kept": "as is"},
    )
    params = {"futureParamsField": {"a": [1, {"b": "c"}]}, "message": message}
    payload = params
    if binding == "JSONRPC":
        payload = jsonrpc_request("SendMessage", params, "unknown-1")
    # Unusual but valid spacing and key order: any re-serialisation would change these bytes.
    return json.dumps(payload, indent=1, separators=(" ,", " : ")).encode()


async def test_unknown_fields_reach_upstream_byte_for_byte_without_caller_credential(
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice: Caller,
    alice_http: httpx.AsyncClient,
    binding: str,
):
    text = unique_text("unknown-fields")
    body = _body_with_unknown_fields(binding, text)
    url = (
        broker.jsonrpc_url("echo")
        if binding == "JSONRPC"
        else f"{broker.rest_url('echo')}/message:send"
    )
    headers = {**A2A_V1, "Content-Type": "application/json"}

    response = await alice_http.post(url, content=body, headers=headers)

    assert response.status_code == 200, response.text
    assert "TASK_STATE_COMPLETED" in response.text
    [seen] = await recorded_requests(alice_http, upstreams["echo"].url, text)
    assert seen["body"] == body
    forwarded = [value for _, value in seen["headers"]]
    assert not [v for v in forwarded if alice.credential in v]

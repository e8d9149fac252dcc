"""What reaches the upstream agent, and what the broker refuses before anything does.

The upstream gets the credential the broker holds for it and never the caller's; oversized
headers and push-notification URLs the egress rules refuse stop at the broker (the recorder in
front of the echo agent shows what got through).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from broker.errors import EgressDeniedError, HeadersTooLargeError

from .conftest import ECHO_UPSTREAM_TOKEN, Broker, Caller, Upstream
from .wire import (
    A2A_V1,
    assert_jsonrpc_error,
    assert_rest_error,
    jsonrpc,
    recorded_requests,
    sse_events,
    user_message,
)

METADATA_PUSH_URL = "http://169.254.169.254/x"
MAPPED_METADATA_PUSH_URL = "http://[::ffff:169.254.169.254]/"
FILLER_BYTES = 20 * 1024  # more than the default max_header_bytes (16 KiB)


def _marker(label: str) -> str:
    return f"{label}-{uuid.uuid4()}"


async def _send(
    http: httpx.AsyncClient, broker: Broker, binding: str, params: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    """SendMessage to echo on ``binding`` with ``params`` (extra ``headers`` allowed)."""
    if binding == "JSONRPC":
        return await jsonrpc(http, broker.jsonrpc_url("echo"), "SendMessage", params, **kwargs)
    headers = {**A2A_V1, **kwargs.get("headers", {})}
    return await http.post(f"{broker.rest_url('echo')}/message:send", json=params, headers=headers)


def _task_of(binding: str, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    task: dict[str, Any] = (body["result"] if binding == "JSONRPC" else body)["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", body
    return task


def _assert_error(binding: str, response: httpx.Response, expected: type) -> None:
    if binding == "JSONRPC":
        assert_jsonrpc_error(response, expected)
    else:
        assert_rest_error(response, expected)


# --- credentials upstream ---------------------------------------------------------------------


async def test_upstream_gets_the_brokers_credential_for_it_not_the_callers(
    *,
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice: Caller,
    alice_http: httpx.AsyncClient,
    binding: str,
):
    text = _marker("upstream-credential")

    _task_of(binding, await _send(alice_http, broker, binding, {"message": user_message(text)}))

    [seen] = await recorded_requests(alice_http, upstreams["echo"].url, text)
    authorizations = [value for name, value in seen["headers"] if name == "authorization"]
    assert authorizations == [f"Bearer {ECHO_UPSTREAM_TOKEN}"]
    leaked = [(name, value) for name, value in seen["headers"] if alice.credential in value]
    assert not leaked


# --- header size ------------------------------------------------------------------------------


async def test_a_caller_only_identity_from_the_config_alone_can_call(
    broker: Broker, http: httpx.AsyncClient, binding: str
):
    """[agents.carol] with no cards_dir at all: the credential is bound at start-up."""
    carol = broker.callers["carol"]

    response = await _send(
        http, broker, binding, {"message": user_message(_marker("carol"))}, headers=carol.headers
    )

    _task_of(binding, response)


async def test_oversized_headers_are_refused(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    text = _marker("big-headers")
    filler = {"X-Filler": "f" * FILLER_BYTES}

    response = await _send(
        alice_http, broker, binding, {"message": user_message(text)}, headers=filler
    )

    _assert_error(binding, response, HeadersTooLargeError)
    assert await recorded_requests(alice_http, upstreams["echo"].url, text) == []


# --- push-notification URLs -------------------------------------------------------------------


# "pusher" is the echo upstream under a card that declares push notifications: the broker
# judges push configs only for agents whose card says they take them (else the spec's
# PushNotificationNotSupported comes first, see test_one_reading.py).
PUSHER = "pusher"


async def _alice_task_id(broker: Broker, alice_http: httpx.AsyncClient) -> str:
    params = {"message": user_message(_marker("push-task"))}
    url = broker.jsonrpc_url(PUSHER)
    return str(_task_of("JSONRPC", await jsonrpc(alice_http, url, "SendMessage", params))["id"])


async def _create_push_config(
    http: httpx.AsyncClient, broker: Broker, binding: str, task_id: str, url: str
) -> httpx.Response:
    config = {"taskId": task_id, "url": url}
    if binding == "JSONRPC":
        method = "CreateTaskPushNotificationConfig"
        return await jsonrpc(http, broker.jsonrpc_url(PUSHER), method, config)
    path = f"{broker.rest_url(PUSHER)}/tasks/{task_id}/pushNotificationConfigs"
    return await http.post(path, json=config, headers=A2A_V1)


async def test_push_config_to_a_metadata_address_is_refused(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    task_id = await _alice_task_id(broker, alice_http)
    url = f"{METADATA_PUSH_URL}-{uuid.uuid4()}"

    response = await _create_push_config(alice_http, broker, binding, task_id, url)

    _assert_error(binding, response, EgressDeniedError)
    assert await recorded_requests(alice_http, upstreams["echo"].url, url) == []


async def test_push_config_to_an_allowed_address_reaches_the_agent(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    """The control for the refusal above: loopback is allowed here, so the agent is asked."""
    task_id = await _alice_task_id(broker, alice_http)
    url = f"http://127.0.0.1:9/hook-{uuid.uuid4()}"

    await _create_push_config(alice_http, broker, binding, task_id, url)

    assert len(await recorded_requests(alice_http, upstreams["echo"].url, url)) == 1


async def test_send_with_a_push_url_to_a_mapped_metadata_address_is_refused(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    text = _marker("push-send")
    configuration = {"taskPushNotificationConfig": {"url": MAPPED_METADATA_PUSH_URL}}
    params = {"message": user_message(text), "configuration": configuration}

    response = await _send(alice_http, broker, binding, params)

    _assert_error(binding, response, EgressDeniedError)
    assert await recorded_requests(alice_http, upstreams["echo"].url, text) == []


# --- percent-encoded REST paths ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/message%3Asend", "/message:send"])
async def test_percent_encoded_rest_send_works_like_the_plain_one(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, path: str
):
    text = _marker("percent")
    url = f"{broker.rest_url('echo')}{path}"

    response = await alice_http.post(url, json={"message": user_message(text)}, headers=A2A_V1)

    task = _task_of("HTTP+JSON", response)
    assert [p["text"] for a in task["artifacts"] for p in a["parts"]] == [f"echo: {text}"]
    [seen] = await recorded_requests(alice_http, upstreams["echo"].url, text)
    assert seen["path"] == "/a2a/rest/message:send"  # the ASGI path, decoded by the agent


async def test_percent_encoded_rest_stream_works(broker: Broker, alice_http: httpx.AsyncClient):
    text = _marker("percent-stream")
    url = f"{broker.rest_url('echo')}/message%3Astream"

    response, events = await sse_events(
        alice_http, "POST", url, json={"message": user_message(text)}, headers=A2A_V1
    )

    assert response.status_code == 200, events
    assert response.headers["content-type"].startswith("text/event-stream")
    last = events[-1]["data"]
    assert last["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED", events

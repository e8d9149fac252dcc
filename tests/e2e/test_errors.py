"""Every refusal reaches the caller as its documented error, on both bindings, never a bare 500.

JSON-RPC: the error code and ``error.data[0].reason`` from ``broker.errors``, HTTP 200 unless the
error belongs to the HTTP transport (credentials, body size). HTTP+JSON: the google.rpc.Status
payload with the error's HTTP status and ``details[0].reason``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker.errors import (
    AgentNotFoundError,
    AgentSuspendedError,
    BatchNotSupportedError,
    BodyTooLargeError,
    BrokerError,
    InvalidCredentialError,
    InvalidRequestError,
    JSONParseError,
    JSONTooDeepError,
    MethodNotFoundError,
    UnauthenticatedError,
    UpstreamBadResponseError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    VersionNotSupportedError,
)

from .conftest import MAX_BODY_BYTES, MAX_JSON_DEPTH, Broker
from .wire import A2A_V1, assert_jsonrpc_error, assert_rest_error, sse_events, user_message

UPSTREAM_FAILURES = [
    pytest.param("down", UpstreamUnreachableError, id="down"),
    pytest.param("hang", UpstreamTimeoutError, id="hang"),
    pytest.param("garbage-html", UpstreamBadResponseError, id="html"),
    pytest.param("garbage-badjson", UpstreamBadResponseError, id="bad-json"),
    pytest.param("garbage-500", UpstreamBadResponseError, id="html-500"),
]
JSON_HEADERS = {**A2A_V1, "Content-Type": "application/json"}


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _send_params(text: str = "hello", **message_fields: Any) -> dict[str, Any]:
    return {"message": user_message(text, **message_fields)}


def _rpc(method: str = "SendMessage", params: Any = None, **envelope: Any) -> bytes:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or _send_params()}
    return json.dumps({**body, **envelope}).encode()


OVERSIZED_PARAMS = _send_params("x" * (MAX_BODY_BYTES + 1024))
TOO_DEEP_PARAMS = _send_params(metadata=_nested(MAX_JSON_DEPTH * 3))


@pytest.fixture(scope="module")
def suspended(broker: Broker) -> Iterator[str]:
    """The agent ``suspended``, suspended through the admin API for this module."""
    url = f"{broker.url}/admin/agents/suspended"
    response = httpx.post(f"{url}/suspend", headers=broker.admin_headers, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.json()["agent"]["status"] == "suspended"
    yield "suspended"
    httpx.post(f"{url}/resume", headers=broker.admin_headers, trust_env=False)


# --- malformed requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected", "request_id"),
    [
        pytest.param(b'{"jsonrpc": "2.0", "id": 1, "method": ', JSONParseError, None, id="json"),
        pytest.param(b"[" + _rpc() + b"]", BatchNotSupportedError, None, id="batch"),
        pytest.param(_rpc(jsonrpc="1.0"), InvalidRequestError, ..., id="wrong-jsonrpc"),
        pytest.param(_rpc(method="NoSuchMethod"), MethodNotFoundError, 1, id="unknown-method"),
        pytest.param(_rpc(params=OVERSIZED_PARAMS), BodyTooLargeError, ..., id="oversized"),
        pytest.param(_rpc(params=TOO_DEEP_PARAMS), JSONTooDeepError, ..., id="too-deep"),
    ],
)
async def test_jsonrpc_malformed_request(
    broker: Broker,
    alice_http: httpx.AsyncClient,
    body: bytes,
    expected: type[BrokerError],
    request_id: Any,
):
    response = await alice_http.post(broker.jsonrpc_url("echo"), content=body, headers=JSON_HEADERS)

    assert_jsonrpc_error(response, expected, request_id=request_id)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b'{"message": {"role": ', JSONParseError, id="json"),
        pytest.param(json.dumps(OVERSIZED_PARAMS).encode(), BodyTooLargeError, id="oversized"),
        pytest.param(json.dumps(TOO_DEEP_PARAMS).encode(), JSONTooDeepError, id="too-deep"),
    ],
)
async def test_rest_malformed_request(
    broker: Broker, alice_http: httpx.AsyncClient, body: bytes, expected: type[BrokerError]
):
    url = f"{broker.rest_url('echo')}/message:send"

    response = await alice_http.post(url, content=body, headers=JSON_HEADERS)

    assert_rest_error(response, expected)


# --- who is calling, and whom -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        pytest.param(None, UnauthenticatedError, id="none"),
        pytest.param("Basic YWxpY2U6cHc=", UnauthenticatedError, id="not-bearer"),
        pytest.param("Bearer not-a-broker-credential", InvalidCredentialError, id="wrong"),
    ],
)
async def test_missing_or_wrong_credentials(
    broker: Broker,
    http: httpx.AsyncClient,
    binding: str,
    authorization: str | None,
    expected: type[BrokerError],
):
    headers = {**JSON_HEADERS, **({"Authorization": authorization} if authorization else {})}

    if binding == "JSONRPC":
        response = await http.post(broker.jsonrpc_url("echo"), content=_rpc(), headers=headers)
        assert_jsonrpc_error(response, expected)
    else:
        url = f"{broker.rest_url('echo')}/message:send"
        response = await http.post(url, json=_send_params(), headers=headers)
        assert_rest_error(response, expected)


async def test_suspended_target(
    broker: Broker, alice_http: httpx.AsyncClient, suspended: str, binding: str
):
    await _assert_send_refused(broker, alice_http, suspended, binding, AgentSuspendedError)


async def test_unknown_target(broker: Broker, alice_http: httpx.AsyncClient, binding: str):
    await _assert_send_refused(broker, alice_http, "nobody", binding, AgentNotFoundError)


# --- upstream failures ------------------------------------------------------------------------


@pytest.mark.parametrize(("agent", "expected"), UPSTREAM_FAILURES)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
async def test_upstream_failure(
    *,
    broker: Broker,
    alice_http: httpx.AsyncClient,
    binding: str,
    agent: str,
    expected: type[BrokerError],
    streaming: bool,
):
    await _assert_send_refused(broker, alice_http, agent, binding, expected, streaming=streaming)


async def _assert_send_refused(
    broker: Broker,
    http: httpx.AsyncClient,
    agent: str,
    binding: str,
    expected: type[BrokerError],
    *,
    streaming: bool = False,
) -> None:
    """A send (unary or streaming) is refused before any event, as a plain JSON error."""
    if binding == "JSONRPC":
        method = "SendStreamingMessage" if streaming else "SendMessage"
        url, body = broker.jsonrpc_url(agent), _rpc(method=method)
    else:
        path = "/message:stream" if streaming else "/message:send"
        url, body = broker.rest_url(agent) + path, json.dumps(_send_params()).encode()

    response, events = await sse_events(http, "POST", url, content=body, headers=JSON_HEADERS)

    assert [e["event"] for e in events] == ["json"], events
    if binding == "JSONRPC":
        assert_jsonrpc_error(response, expected, request_id=1)
    else:
        assert_rest_error(response, expected)


# --- protocol version -------------------------------------------------------------------------


def _v03_send() -> dict[str, Any]:
    message = {
        "kind": "message",
        "messageId": "m-0.3",
        "role": "user",
        "parts": [{"kind": "text", "text": "hello from 0.3"}],
    }
    return {"jsonrpc": "2.0", "id": "v03", "method": "message/send", "params": {"message": message}}


async def test_v03_client_gets_version_not_supported(broker: Broker, alice_http: httpx.AsyncClient):
    response = await alice_http.post(broker.jsonrpc_url("echo"), json=_v03_send())

    assert_jsonrpc_error(response, VersionNotSupportedError, request_id="v03")


async def test_request_without_version_header_is_refused(
    broker: Broker, alice_http: httpx.AsyncClient, binding: str
):
    headers = {"Content-Type": "application/json"}

    if binding == "JSONRPC":
        response = await alice_http.post(
            broker.jsonrpc_url("echo"), content=_rpc(), headers=headers
        )
        assert_jsonrpc_error(response, VersionNotSupportedError, request_id=1)
    else:
        url = f"{broker.rest_url('echo')}/message:send"
        response = await alice_http.post(url, json=_send_params(), headers=headers)
        assert_rest_error(response, VersionNotSupportedError)

"""Raw HTTP calls to A2A endpoints and checks of what a caller sees on the wire.

The SDK client hides the wire; the error, parity and isolation tests need to see it.
Expected broker errors are the classes in ``broker.errors``, so the tests check the documented
table (code, reason, HTTP status) rather than numbers copied into each test.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx

from broker.errors import BrokerError, grpc_status_name

A2A_V1 = {"A2A-Version": "1.0"}
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
# Text that would mean the broker leaked its internals to a caller.
_INTERNAL_MARKERS = ("Traceback", 'File "', "Errno", "httpx.", "aiohttp.", "Exception")


def user_message(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "role": "ROLE_USER",
        "parts": [{"text": text}],
        **extra,
    }


def jsonrpc_request(method: str, params: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


async def jsonrpc(
    http: httpx.AsyncClient,
    url: str,
    method: str,
    params: Any,
    *,
    request_id: Any = 1,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST one JSON-RPC request with ``A2A-Version: 1.0`` (plus ``headers``)."""
    body = jsonrpc_request(method, params, request_id)
    return await http.post(url, json=body, headers={**A2A_V1, **(headers or {})})


async def sse_events(
    http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """Send a streaming request; return the response and its events, or the JSON body as one.

    Each event is ``{"event": name, "data": parsed JSON}``; an answer that is not an event
    stream (an error before the first event) comes back as ``[{"event": "json", "data": …}]``.
    """
    async with http.stream(method, url, **kwargs) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aread()
            return response, [{"event": "json", "data": response.json()}]
        events: list[dict[str, Any]] = []
        name, data = "message", []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif not line and data:
                events.append({"event": name, "data": json.loads("\n".join(data))})
                name, data = "message", []
        return response, events


def _assert_no_internals(message: str) -> None:
    leaked = [marker for marker in _INTERNAL_MARKERS if marker in message]
    assert not leaked, f"error message leaks internals ({leaked}): {message!r}"


def assert_jsonrpc_error(
    response: httpx.Response, expected: type[BrokerError], *, request_id: Any = ...
) -> dict[str, Any]:
    """The response is the JSON-RPC error ``expected`` documents; returns the error object.

    ``request_id`` is the id the response must carry; ``...`` (the default) accepts any.
    """
    http_status = expected.http_status if expected.transport_level else 200
    assert response.status_code == http_status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body.get("jsonrpc") == "2.0", body
    assert "result" not in body, body
    if request_id is not ...:
        assert body.get("id") == request_id, body
    error = body["error"]
    assert (error["code"], error["data"][0]["reason"]) == (expected.code, expected.reason), body
    assert error["data"][0]["@type"] == ERROR_INFO_TYPE, body
    _assert_no_internals(error["message"])
    return error


def assert_rest_error(response: httpx.Response, expected: type[BrokerError]) -> dict[str, Any]:
    """The response is the google.rpc.Status payload ``expected`` documents."""
    assert response.status_code == expected.http_status, response.text
    error = response.json()["error"]
    assert error["code"] == expected.http_status, error
    status = expected.grpc_status or grpc_status_name(expected.http_status)
    assert error["status"] == status, error
    assert error["details"][0]["reason"] == expected.reason, error
    assert error["details"][0]["@type"] == ERROR_INFO_TYPE, error
    _assert_no_internals(error["message"])
    return error


async def recorded_requests(
    http: httpx.AsyncClient, upstream_url: str, marker: str
) -> list[dict[str, Any]]:
    """What the recorder in front of an agent saw, limited to requests whose body has ``marker``.

    Each request: ``method``, ``path``, ``headers`` (list of [name, value]) and ``body`` (bytes).
    """
    response = await http.get(f"{upstream_url}/_recorded")
    hits = []
    for request in response.json():
        body = base64.b64decode(request["body_b64"])
        if marker.encode() in body:
            hits.append({**request, "body": body})
    return hits

"""Broker errors on the wire, for both A2A bindings: the one place errors become bytes.

JSON-RPC: ``{"jsonrpc":"2.0","id":…,"error":{"code","message","data":[ErrorInfo, …]}}``, sent
with HTTP 200 unless the error belongs to the HTTP transport itself (credentials, size, store).
REST: google.rpc.Status JSON ``{"error":{"code","status","message","details":[ErrorInfo, …]}}``
with the error's HTTP status.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.errors import BrokerError, grpc_status_name
from broker.types import Binding, Reply

_encoder = msgspec.json.Encoder()
_NULL_ID = msgspec.Raw(b"null")

ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def error_details(err: BrokerError) -> list[dict[str, Any]]:
    info: dict[str, Any] = {
        "@type": ERROR_INFO_TYPE,
        "reason": err.reason,
        "domain": err.domain,
        "metadata": dict(err.metadata),
    }
    details: list[dict[str, Any]] = [info]
    field_errors = (err.data or {}).get("errors")
    if isinstance(field_errors, list) and field_errors:
        violations = [
            {"field": str(e.get("field", "")), "description": str(e.get("message", ""))}
            for e in field_errors
            if isinstance(e, dict)
        ]
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": violations})
    return details


def jsonrpc_error_body(err: BrokerError, request_id: msgspec.Raw | None) -> bytes:
    payload = {
        "jsonrpc": "2.0",
        "id": request_id or _NULL_ID,
        "error": {"code": err.code, "message": err.message, "data": error_details(err)},
    }
    return _encoder.encode(payload)


def rest_error_body(err: BrokerError) -> bytes:
    payload = {
        "error": {
            "code": err.http_status,
            "status": err.grpc_status or grpc_status_name(err.http_status),
            "message": err.message,
            "details": error_details(err),
        }
    }
    return _encoder.encode(payload)


def error_headers(err: BrokerError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    if err.http_status == 401:
        headers["www-authenticate"] = 'Bearer realm="a2a-broker"'
    if err.reason == "APPROVAL_PENDING" and "approval_id" in err.metadata:
        # What to send again, once approved, with the same call (docs/approvals.md).
        headers["a2a-broker-approval"] = err.metadata["approval_id"]
    return headers


def error_reply(err: BrokerError, binding: Binding, request_id: msgspec.Raw | None) -> Reply:
    if binding == "jsonrpc":
        status = err.http_status if err.transport_level else 200
        return Reply(status, jsonrpc_error_body(err, request_id), headers=error_headers(err))
    return Reply(err.http_status, rest_error_body(err), headers=error_headers(err))


def sse_error_event(err: BrokerError, binding: Binding, request_id: msgspec.Raw | None) -> bytes:
    """An ``event: error`` SSE frame, as A2A servers send errors after a stream has started."""
    body = jsonrpc_error_body(err, request_id) if binding == "jsonrpc" else rest_error_body(err)
    return b"event: error\r\ndata: " + body + b"\r\n\r\n"

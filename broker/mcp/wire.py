"""MCP messages the broker writes itself: JSON-RPC errors and SSE frames.

An MCP client reads a JSON-RPC error's ``code`` and ``message`` and keeps ``data`` as it is; the
broker puts the same ``google.rpc.ErrorInfo`` list there as on its A2A edge (reason, domain,
metadata), so one client library can branch on ``reason`` for both protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from broker.errors import BrokerError

_encoder = msgspec.json.Encoder()
NULL_ID = msgspec.Raw(b"null")
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True, slots=True)
class McpErrorReply:
    status: int
    body: bytes
    headers: dict[str, str]


def error_object(err: BrokerError) -> dict[str, Any]:
    info = {"@type": _ERROR_INFO, "reason": err.reason, "domain": err.domain,
            "metadata": err.metadata}
    return {"code": err.code, "message": err.message, "data": [info]}


def error_body(err: BrokerError, request_id: msgspec.Raw | None) -> bytes:
    """The JSON-RPC error message for ``err``, answering ``request_id`` (null if unknown)."""
    payload = {"jsonrpc": "2.0", "id": request_id or NULL_ID, "error": error_object(err)}
    return _encoder.encode(payload)


def error_reply(err: BrokerError, request_id: msgspec.Raw | None) -> McpErrorReply:
    """Transport errors keep their HTTP status (a client re-initializes on 404, retries on
    503); every other refusal is a JSON-RPC error with HTTP 200, as on the A2A edge."""
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    status = err.http_status if err.transport_level else 200
    return McpErrorReply(status, error_body(err, request_id), headers)


def sse_frame(data: bytes, *, event_id: bytes = b"", event: bytes = b"") -> bytes:
    """One SSE event carrying ``data``; a payload spread over lines (pretty-printed JSON) gets
    one ``data:`` line per line, which a reader joins back with newlines."""
    head = b""
    if event_id:
        head += b"id: " + event_id + b"\r\n"
    if event:
        head += b"event: " + event + b"\r\n"
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return head + b"".join(b"data: " + line + b"\r\n" for line in lines) + b"\r\n"

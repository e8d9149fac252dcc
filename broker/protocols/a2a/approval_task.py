"""The task the broker answers with while a call waits for a human's approval (A2A 1.0).

The caller sees an ordinary A2A task, owned by the broker: ``TASK_STATE_AUTH_REQUIRED`` while
the call waits (an interrupted state: the work waits on someone else's authorization, not on
the caller's input; docs/decisions/0053), then ``TASK_STATE_REJECTED`` (denied),
``TASK_STATE_FAILED`` (expired, voided) or ``TASK_STATE_CANCELED`` (the caller cancelled), each
with a status message saying why, and ``metadata["a2a-broker/approval"]`` with the approval's id,
state and expiry. Bodies are built for either binding (JSON-RPC result or REST body).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from broker.types import Binding, Reply

_encoder = msgspec.json.Encoder()
META_KEY = "a2a-broker/approval"
REST_MEDIA_TYPE = "application/a2a+json"


def timestamp(epoch_s: float) -> str:
    """RFC 3339 UTC, as A2A writes timestamps."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def task(
    task_id: str,
    context_id: str,
    state: str,
    text: str,
    *,
    meta: dict[str, Any],
    at: float,
) -> dict[str, Any]:
    """A Task in ``state`` (``TASK_STATE_…``) whose status message says ``text``."""
    return {
        "id": task_id,
        "contextId": context_id,
        "status": {
            "state": state,
            "message": {
                "messageId": uuid.uuid4().hex,
                "role": "ROLE_AGENT",
                "taskId": task_id,
                "contextId": context_id,
                "parts": [{"text": text}],
                "metadata": {META_KEY: meta},
            },
            "timestamp": timestamp(at),
        },
        "metadata": {META_KEY: meta},
    }


def status_update(a_task: dict[str, Any]) -> dict[str, Any]:
    """The TaskStatusUpdateEvent that moves a subscriber to ``a_task``'s status."""
    return {
        "taskId": a_task["id"],
        "contextId": a_task["contextId"],
        "status": a_task["status"],
        "metadata": a_task["metadata"],
    }


def reply(binding: Binding, request_id: msgspec.Raw | None, result: dict[str, Any]) -> Reply:
    """A unary answer: ``result`` (a Task, or a SendMessageResponse) in the binding's shape."""
    if binding == "jsonrpc":
        body = {"jsonrpc": "2.0", "id": request_id or msgspec.Raw(b"null"), "result": result}
        return Reply(200, _encoder.encode(body))
    return Reply(200, _encoder.encode(result), REST_MEDIA_TYPE)


def sse_event(binding: Binding, request_id: msgspec.Raw | None, event: dict[str, Any]) -> bytes:
    """One SSE frame carrying a StreamResponse (``{"task": …}`` or ``{"statusUpdate": …}``)."""
    if binding == "jsonrpc":
        event = {"jsonrpc": "2.0", "id": request_id or msgspec.Raw(b"null"), "result": event}
    return b"data: " + _encoder.encode(event) + b"\r\n\r\n"

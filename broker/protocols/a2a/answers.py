"""What an agent may answer: the A2A shapes the broker relays, never one that passes for it.

Unary answers: JSON (``application/json`` or ``application/a2a+json``), a JSON-RPC 2.0
response with exactly one of ``result`` and ``error`` (a result only with HTTP 200), or on REST
a 2xx body of the operation's shape or a 4xx/5xx google.rpc.Status; anything else is
UPSTREAM_BAD_RESPONSE. Streams: every event is parsed, checked to be a StreamResponse (or an
error) for the binding, and re-emitted in the broker's own framing (one ``data:`` line, the
caller's JSON-RPC id, the agent's comments, ids and retry hints dropped); an invalid frame ends
the stream with the broker's error event. An agent error whose ErrorInfo claims the broker's
domain (``a2a-broker``) is a forgery and refused, so an error in that domain always comes
from the broker (decision 0017).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import ERROR_DOMAIN_BROKER, UpstreamBadResponseError
from broker.protocols.a2a.operations import (
    CANCEL_TASK,
    DELETE_PUSH_CONFIG,
    GET_TASK,
    JSON_MEDIA_TYPES,
    LIST_TASKS,
    Operation,
)
from broker.types import Binding

_ABSENT = msgspec.Raw(b"")


class _RpcResponse(msgspec.Struct):
    # An absent member decodes as the empty Raw; a JSON null as Raw(b"null").
    jsonrpc: str = ""
    id: msgspec.Raw = _ABSENT
    result: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


class _RpcError(msgspec.Struct):
    code: int
    message: str
    data: Any = None


class _Status(msgspec.Struct):
    code: int
    message: str = ""
    status: str = ""
    details: list[Any] = msgspec.field(default_factory=list)


class _RestError(msgspec.Struct):
    error: _Status


class _StateRef(msgspec.Struct):
    state: str = ""


class _TaskRef(msgspec.Struct):
    id: str
    status: _StateRef | None = None


class _UpdateRef(msgspec.Struct):
    taskId: str
    status: _StateRef | None = None


# A task in one of these states will not change again (A2A 1.0 names, and 0.3's).
FINISHED_STATES = frozenset({
    "TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED",
    "completed", "failed", "canceled", "rejected",
})  # fmt: skip


class _ListShape(msgspec.Struct):
    tasks: list[msgspec.Raw] = msgspec.field(default_factory=list)


class _MessageRef(msgspec.Struct):
    messageId: str = ""


class _Payload(msgspec.Struct):
    """SendMessageResponse / StreamResponse: a oneof, so exactly one member."""

    task: _TaskRef | UnsetType = UNSET
    message: _MessageRef | UnsetType = UNSET
    statusUpdate: _UpdateRef | UnsetType = UNSET
    artifactUpdate: _UpdateRef | UnsetType = UNSET


_rpc = msgspec.json.Decoder(_RpcResponse)
_rpc_error = msgspec.json.Decoder(_RpcError)
_rest_error = msgspec.json.Decoder(_RestError)
_payload = msgspec.json.Decoder(_Payload)
_task = msgspec.json.Decoder(_TaskRef)
_list = msgspec.json.Decoder(_ListShape)
_raw = msgspec.json.Decoder(msgspec.Raw)
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def bad(status: int, what: str) -> UpstreamBadResponseError:
    return UpstreamBadResponseError(detail=f"upstream HTTP {status}: {what}")


def check_media_type(status: int, content_type: str) -> None:
    """A unary answer is JSON; an HTML page or plain text is not an A2A answer."""
    media = content_type.partition(";")[0].strip().lower()
    if media not in JSON_MEDIA_TYPES:
        raise bad(status, f"content type {content_type[:60]!r}")


# Frozen Structs, made per answer (a frozen dataclass sets each field through object.__setattr__).
class SentTask(msgspec.Struct, frozen=True):
    """The task a send's result names, as the check read it: the caller's answer is decoded
    once for its shape and for this."""

    id: str
    finished: bool


class RpcAnswer(msgspec.Struct, frozen=True):
    """A checked JSON-RPC answer: its result (``None`` if it is an error), and the task it
    names if it answers a send."""

    id: msgspec.Raw
    result: msgspec.Raw | None
    task: SentTask | None = None


def check_jsonrpc(op: Operation, status: int, body: bytes) -> RpcAnswer:
    """The JSON-RPC answer to ``op``, checked; raises ``UpstreamBadResponseError``."""
    try:
        env = _rpc.decode(body)
    except msgspec.DecodeError:
        raise bad(status, "not a JSON-RPC response") from None
    has_result, has_error = len(env.result) > 0, len(env.error) > 0
    if env.jsonrpc != "2.0" or has_result == has_error:
        raise bad(status, "not a JSON-RPC 2.0 response")
    if has_error:
        check_rpc_error(status, env.error)
        return RpcAnswer(env.id, None)
    if status != 200:
        raise bad(status, "a JSON-RPC result with an HTTP error status")
    if op.streaming:
        raise bad(status, "a streaming method answered a result without a stream")
    return RpcAnswer(env.id, env.result, check_result(op, status, env.result))


def check_rpc_error(status: int, error: msgspec.Raw) -> None:
    try:
        found = _rpc_error.decode(error)
    except msgspec.DecodeError:
        raise bad(status, "a JSON-RPC error without an integer code and a message") from None
    _not_the_brokers(status, found.data)


def check_rest(
    op: Operation, status: int, body: bytes
) -> tuple[msgspec.Raw, SentTask | None] | None:
    """The REST answer to ``op``, checked: its payload if it succeeded (and the task it names
    if it answers a send), None for an error."""
    if not 200 <= status < 300 and not 400 <= status < 600:
        raise bad(status, "neither a success nor an error status")
    if status >= 400:
        try:
            found = _rest_error.decode(body)
        except msgspec.DecodeError:
            raise bad(status, "not a google.rpc.Status error") from None
        _not_the_brokers(status, found.error.details)
        return None
    if op is DELETE_PUSH_CONFIG and not body.strip():
        return None
    if op.streaming:
        raise bad(status, "a streaming method answered without a stream")
    try:
        payload = _raw.decode(body)
    except msgspec.DecodeError:
        raise bad(status, "not JSON") from None
    return payload, check_result(op, status, payload)


# What bytes.lstrip() skips; the first byte after it must open an object.
_LEADING_SPACE = re.compile(rb"[ \t\n\r\x0b\x0c]*")
_OPEN_BRACE = ord("{")


def check_result(op: Operation, status: int, result: msgspec.Raw) -> SentTask | None:
    """The result of a successful unary call has its operation's shape; a send's result may
    name the task it started (returned)."""
    if op is DELETE_PUSH_CONFIG:
        return None  # JSON-RPC null, REST {}
    view = memoryview(result)  # the result is read in place, never copied
    at = _LEADING_SPACE.match(view).end()  # type: ignore[union-attr]  # "*" always matches
    if at >= len(view) or view[at] != _OPEN_BRACE:
        raise bad(status, f"the {op.name} result is not an object")
    try:
        if op.sends_message:
            payload = _payload.decode(result)
            _one_member(payload, ("task", "message"), status)
            return _sent_task(payload.task)
        if op in (GET_TASK, CANCEL_TASK):
            _task.decode(result)
        elif op is LIST_TASKS:
            _list.decode(result)
    except msgspec.DecodeError:
        raise bad(status, f"the {op.name} result does not have its shape") from None
    return None


def _sent_task(task: _TaskRef | UnsetType) -> SentTask | None:
    if isinstance(task, UnsetType):
        return None
    return SentTask(task.id, task.status is not None and task.status.state in FINISHED_STATES)


def _one_member(payload: _Payload, allowed: tuple[str, ...], status: int) -> str | None:
    """The task id a SendMessageResponse/StreamResponse names, after checking it is a oneof."""
    present = [name for name in payload.__struct_fields__ if getattr(payload, name) is not UNSET]
    if len(present) != 1 or present[0] not in allowed:
        raise bad(status, f"expected exactly one of {', '.join(allowed)}")
    member = getattr(payload, present[0])
    if isinstance(member, _TaskRef):
        return member.id
    if isinstance(member, _UpdateRef):
        return member.taskId
    return None


def _not_the_brokers(status: int, details: Any) -> None:
    """An agent's error may not claim the broker's domain: that would be a forged broker error."""
    entries = details if isinstance(details, list) else [details]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("domain") == ERROR_DOMAIN_BROKER:
            raise bad(status, "the agent's error claims the broker's domain")


# --- Streams ------------------------------------------------------------------------------------

_STREAM_MEMBERS = ("task", "message", "statusUpdate", "artifactUpdate")


@dataclass(frozen=True, slots=True)
class Frame:
    """One agent event, checked and re-framed: the bytes to send, the task it names if any,
    and whether it shows that task ended (a task or status update in a final state)."""

    data: bytes
    task_id: str | None = None
    finished: bool = False


def reframe(binding: Binding, request_id: msgspec.Raw | None, event: bytes) -> Frame | None:
    """The broker's frame for one agent SSE event, or None for an event with no data (a
    comment, a keep-alive). Raises ``UpstreamBadResponseError`` for an invalid event."""
    kind, data = _fields(event)
    if data is None:
        return None
    if binding == "jsonrpc":
        return _jsonrpc_frame(kind, data, request_id)
    return _rest_frame(kind, data)


def _fields(event: bytes) -> tuple[str, bytes | None]:
    """The event type and the joined ``data`` lines of one SSE event (spec: HTML SSE)."""
    kind, data = "", []
    for line in event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value.decode("utf-8", "replace")
        elif name not in (b"id", b"retry"):
            raise bad(200, "an SSE field the broker does not relay")
    if kind not in ("", "message", "error"):
        raise bad(200, "an SSE event type other than message and error")
    return kind, b"\n".join(data) if data else None


def _jsonrpc_frame(kind: str, data: bytes, request_id: msgspec.Raw | None) -> Frame:
    try:
        env = _rpc.decode(data)
    except msgspec.DecodeError:
        raise bad(200, "an event that is not a JSON-RPC response") from None
    has_result, has_error = len(env.result) > 0, len(env.error) > 0
    if env.jsonrpc != "2.0" or has_result == has_error or (kind == "error") != has_error:
        raise bad(200, "an event that is not one JSON-RPC 2.0 result or error")
    rpc_id = request_id if request_id is not None else msgspec.Raw(b"null")
    if has_error:
        check_rpc_error(200, env.error)
        body = {"jsonrpc": "2.0", "id": rpc_id, "error": _compact(env.error)}
        return Frame(b"event: error\r\ndata: " + _encoder.encode(body) + b"\r\n\r\n")
    task_id, finished = _stream_member(env.result)
    body = {"jsonrpc": "2.0", "id": rpc_id, "result": _compact(env.result)}
    return Frame(b"data: " + _encoder.encode(body) + b"\r\n\r\n", task_id, finished)


def _rest_frame(kind: str, data: bytes) -> Frame:
    if kind == "error":
        try:
            found = _rest_error.decode(data)
        except msgspec.DecodeError:
            raise bad(200, "an error event that is not a google.rpc.Status") from None
        _not_the_brokers(200, found.error.details)
        return Frame(b"event: error\r\ndata: " + bytes(_compact(msgspec.Raw(data))) + b"\r\n\r\n")
    task_id, finished = _stream_member(msgspec.Raw(data))
    data_line = b"data: " + bytes(_compact(msgspec.Raw(data))) + b"\r\n\r\n"
    return Frame(data_line, task_id, finished)


def _stream_member(result: msgspec.Raw) -> tuple[str | None, bool]:
    """The task id an event names, and whether it shows the task in a final state."""
    try:
        payload = _payload.decode(result)
        task_id = _one_member(payload, _STREAM_MEMBERS, 200)
    except msgspec.DecodeError:
        raise bad(200, "an event that is not a StreamResponse") from None
    member = payload.task if payload.task is not UNSET else payload.statusUpdate
    finished = isinstance(member, _TaskRef | _UpdateRef) and member.status is not None and (
        member.status.state in FINISHED_STATES
    )  # fmt: skip
    return task_id, finished


def _compact(raw: msgspec.Raw) -> msgspec.Raw:
    """Valid JSON on one line: as it came unless it holds line breaks (whitespace only, as JSON
    strings cannot hold raw ones), then re-encoded."""
    text = bytes(raw)
    if b"\n" not in text and b"\r" not in text:
        return raw
    return msgspec.Raw(_encoder.encode(_any.decode(text)))

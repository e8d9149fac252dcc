"""One reading of each request: the fields the broker judges, read exactly as the agent reads them.

The a2a-sdk agent decodes a JSON-RPC body with ``json.loads`` and the params with protobuf's
``ParseDict(..., ignore_unknown_fields=True)``; a REST body with protobuf's ``Parse``, the task
from the path, the rest from the query string (``parse_qsl``). Protobuf accepts both JSON
spellings of a field (``taskId`` and ``task_id``) and, when both are given, keeps whichever
comes last. Duplicate keys keep the last value (``json.loads``; msgspec does the same).

The broker reads the same fields with typed msgspec structs and follows one rule where a reading
could differ: it refuses (``AmbiguousRequestError``) a request that gives both spellings of a
field it judges, names a task in a field the operation does not read (``taskId`` on GetTask,
whose task is ``id``), or names a task in a REST body or query other than the path's. What it
judged is then exactly what the agent acts on, and it forwards the caller's bytes unchanged
(decision 0015). ``tests/property/test_one_reading.py`` checks this against the SDK's own
parsers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import (
    AmbiguousRequestError,
    BatchNotSupportedError,
    BrokerError,
    InvalidParamsError,
    InvalidRequestError,
    InvalidSkillError,
    JSONParseError,
    NotificationNotSupportedError,
    TooManyItemsError,
)
from broker.protocols.a2a.operations import (
    CREATE_PUSH_CONFIG,
    LIST_TASKS,
    PUSH_CONFIG_OPERATIONS,
    Operation,
    RestRoute,
)

_ABSENT = msgspec.Raw(b"")
_NULL = msgspec.Raw(b"null")
_ID_START = frozenset(bytes([b]) for b in b'"-0123456789n')
# A skill id as policy and tokens carry it: no whitespace (scopes are space-separated), no
# control characters, bounded.
_SKILL = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,128}")


# The per-request values below are frozen Structs, not frozen dataclasses, which set each field
# through ``object.__setattr__`` (several times the cost of making them).
class Reading(msgspec.Struct, frozen=True):
    """What the broker judged in one request's parameters.

    ``task_id``: the task the operation acts on (task-scoped operations) or continues (a send
    with ``message.taskId``). ``named_tasks``: every task id the request names, ``task_id``
    included (reference tasks, a push config's task), each to be checked for ownership.
    """

    task_id: str | None = None
    named_tasks: tuple[str, ...] = ()
    context_id: str = ""
    push_url: str = ""
    skill: str = ""
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class ItemLimits:
    max_message_parts: int
    max_reference_tasks: int


# --- JSON-RPC envelope -------------------------------------------------------------------------


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    # The SDK (python-jsonrpc) refuses members other than these four, and an id of another type.
    jsonrpc: str
    method: str
    id: str | int | UnsetType | None = UNSET
    params: msgspec.Raw = _ABSENT


class _AnyEnvelope(msgspec.Struct):
    id: msgspec.Raw = _NULL


class Envelope(msgspec.Struct, frozen=True):
    method: str
    id: msgspec.Raw
    params: msgspec.Raw  # always a JSON object's bytes


_envelope = msgspec.json.Decoder(_Envelope)
_any_envelope = msgspec.json.Decoder(_AnyEnvelope)
_encoder = msgspec.json.Encoder()


class EnvelopeError(Exception):
    """A refused envelope, with the id to answer under (null if the body has none usable)."""

    def __init__(self, error: BrokerError, request_id: msgspec.Raw) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


def read_envelope(body: bytes) -> Envelope:
    """The JSON-RPC 2.0 envelope of a request body (valid UTF-8 already).

    Raises ``EnvelopeError`` carrying ``BatchNotSupportedError``, ``JSONParseError``,
    ``InvalidRequestError``, ``NotificationNotSupportedError`` or ``InvalidParamsError``
    (params that are not an object).
    """
    if body.lstrip()[:1] == b"[":
        raise EnvelopeError(BatchNotSupportedError(), _NULL)
    try:
        env = _envelope.decode(body)
    except msgspec.ValidationError as exc:
        err = InvalidRequestError(
            "'jsonrpc' must be \"2.0\", 'method' a string, 'id' a string or an integer, and no"
            " other members are allowed.",
            detail=str(exc),
        )
        raise EnvelopeError(err, _salvaged_id(body)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise EnvelopeError(JSONParseError(detail=str(exc)), _NULL) from None
    if isinstance(env.id, UnsetType):
        raise EnvelopeError(NotificationNotSupportedError(), _NULL)
    request_id = msgspec.Raw(_encoder.encode(env.id))
    if env.jsonrpc != "2.0":
        raise EnvelopeError(InvalidRequestError("'jsonrpc' must be exactly \"2.0\"."), request_id)
    params = env.params if len(env.params) else msgspec.Raw(b"{}")
    if bytes(params).lstrip()[:1] != b"{":
        raise EnvelopeError(InvalidParamsError("'params' must be a JSON object."), request_id)
    return Envelope(env.method, request_id, params)


def _salvaged_id(body: bytes) -> msgspec.Raw:
    """The id of an envelope that did not validate, if it is a plausible one (for the error)."""
    try:
        raw = _any_envelope.decode(body).id
    except msgspec.MsgspecError:
        return _NULL
    return raw if bytes(raw)[:1] in _ID_START else _NULL


# --- Params of each method ---------------------------------------------------------------------


class _Metadata(msgspec.Struct):
    skill: Any = UNSET


class _PushConfig(msgspec.Struct):
    url: str | UnsetType = UNSET
    taskId: str | UnsetType = UNSET
    task_id: str | UnsetType = UNSET


class _Configuration(msgspec.Struct):
    taskPushNotificationConfig: _PushConfig | UnsetType = UNSET
    task_push_notification_config: _PushConfig | UnsetType = UNSET


class _Message(msgspec.Struct):
    taskId: str | UnsetType = UNSET
    task_id: str | UnsetType = UNSET
    contextId: str | UnsetType = UNSET
    context_id: str | UnsetType = UNSET
    referenceTaskIds: list[str] | UnsetType = UNSET
    reference_task_ids: list[str] | UnsetType = UNSET
    parts: list[msgspec.Raw] | UnsetType = UNSET
    metadata: _Metadata | UnsetType = UNSET


class _SendParams(msgspec.Struct):
    message: _Message | UnsetType = UNSET
    configuration: _Configuration | UnsetType = UNSET


class _ByIdParams(msgspec.Struct):
    """GetTask, CancelTask, SubscribeToTask: the task is ``id``; ``taskId`` is not read."""

    id: str | UnsetType = UNSET
    taskId: Any = UNSET
    task_id: Any = UNSET


class _PushParams(msgspec.Struct):
    """The push-config methods: the task is ``taskId``; ``id`` is the config's own id."""

    taskId: str | UnsetType = UNSET
    task_id: str | UnsetType = UNSET
    url: str | UnsetType = UNSET


class _ListParams(msgspec.Struct):
    contextId: str | UnsetType = UNSET
    context_id: str | UnsetType = UNSET
    pageToken: str | UnsetType = UNSET
    page_token: str | UnsetType = UNSET


class _NamedTask(msgspec.Struct):
    """A REST body the agent ignores or overrides with the path: the task fields it may name."""

    id: Any = UNSET
    taskId: Any = UNSET
    task_id: Any = UNSET


_send = msgspec.json.Decoder(_SendParams)
_by_id = msgspec.json.Decoder(_ByIdParams)
_push = msgspec.json.Decoder(_PushParams)
_list = msgspec.json.Decoder(_ListParams)
_named = msgspec.json.Decoder(_NamedTask)


def read_params(op: Operation, params: bytes, limits: ItemLimits) -> Reading:
    """What the broker judges in a JSON-RPC ``params`` object (or a REST send's body).

    Raises ``InvalidParamsError`` (wrong types, no task named), ``AmbiguousRequestError``,
    ``InvalidSkillError`` or ``TooManyItemsError``.
    """
    try:
        if op.sends_message:
            return _send_reading(_send.decode(params), limits)
        if op in PUSH_CONFIG_OPERATIONS:
            return _push_reading(_push.decode(params), with_url=op is CREATE_PUSH_CONFIG)
        if op.task_scoped:
            return _by_id_reading(_by_id.decode(params))
        if op is LIST_TASKS:
            return _list_reading(_list.decode(params))
    except msgspec.ValidationError as exc:
        raise InvalidParamsError(f"Invalid method parameters: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:  # a REST send's body is checked here
        raise JSONParseError(detail=str(exc)) from None
    return Reading()


def _one(camel: Any, snake: Any, field: str) -> Any:
    """The value of a field given in either JSON spelling; both at once could be read two ways."""
    if snake is UNSET:
        return camel
    if camel is not UNSET:
        raise AmbiguousRequestError(
            f"'{field}' is given in both JSON spellings; send one of them.",
            metadata={"field": field},
        )
    return snake


_NO_MESSAGE = _Message()


def _send_reading(send: _SendParams, limits: ItemLimits) -> Reading:
    message = _NO_MESSAGE if send.message is UNSET else send.message
    assert isinstance(message, _Message)  # noqa: S101 - narrowed for mypy
    task_id = _one(message.taskId, message.task_id, "message.taskId") or None
    context_id = _one(message.contextId, message.context_id, "message.contextId") or ""
    refs = _one(message.referenceTaskIds, message.reference_task_ids, "message.referenceTaskIds")
    if message.parts is not UNSET and len(message.parts) > limits.max_message_parts:
        raise _too_many("message.parts", limits.max_message_parts)
    push = _send_push(send.configuration)
    push_task = _one(push.taskId, push.task_id, "configuration.taskPushNotificationConfig.taskId")
    if refs is UNSET and not push_task:  # the common case: at most the message's own task
        named: tuple[str, ...] = (task_id,) if task_id else ()
    else:
        refs = [] if refs is UNSET else refs
        if len(refs) > limits.max_reference_tasks:
            raise _too_many("message.referenceTaskIds", limits.max_reference_tasks)
        named = tuple(dict.fromkeys(t for t in (task_id, *refs, push_task) if t))
    return Reading(
        task_id=task_id,
        named_tasks=named,
        context_id=context_id,
        push_url=push.url or "",
        skill=_metadata_skill(message.metadata),
    )


_NO_PUSH = _PushConfig()


def _send_push(configuration: _Configuration | UnsetType) -> _PushConfig:
    if isinstance(configuration, UnsetType):
        return _NO_PUSH
    push = _one(
        configuration.taskPushNotificationConfig,
        configuration.task_push_notification_config,
        "configuration.taskPushNotificationConfig",
    )
    return _NO_PUSH if push is UNSET else push


def _metadata_skill(metadata: _Metadata | UnsetType) -> str:
    if isinstance(metadata, UnsetType) or metadata.skill is UNSET:
        return ""
    return check_skill(metadata.skill, "message.metadata.skill")


def check_skill(value: object, where: str) -> str:
    """``value`` if it is a valid skill id; raises ``InvalidSkillError`` naming ``where``."""
    if not isinstance(value, str) or not _SKILL.fullmatch(value):
        raise InvalidSkillError(metadata={"field": where})
    return value


def _push_reading(params: _PushParams, *, with_url: bool) -> Reading:
    task_id = _one(params.taskId, params.task_id, "taskId") or ""
    if not task_id:
        raise InvalidParamsError("The request names no task ('taskId').")
    url = (params.url or "") if with_url else ""
    return Reading(task_id=task_id, named_tasks=(task_id,), push_url=url)


def _by_id_reading(params: _ByIdParams) -> Reading:
    if params.taskId is not UNSET or params.task_id is not UNSET:
        raise AmbiguousRequestError(
            "This method's task is 'id'; the agent ignores 'taskId', so a request naming a task"
            " in both could be read two ways. Send only 'id'.",
            metadata={"field": "taskId"},
        )
    if not params.id:
        raise InvalidParamsError("The request names no task ('id').")
    task_id = str(params.id)
    return Reading(task_id=task_id, named_tasks=(task_id,))


def _list_reading(params: _ListParams) -> Reading:
    token = _one(params.pageToken, params.page_token, "pageToken")
    context = _one(params.contextId, params.context_id, "contextId")
    return Reading(
        context_id=context or "", page_token=None if token is UNSET else token
    )


def _too_many(field: str, limit: int) -> TooManyItemsError:
    return TooManyItemsError(
        f"'{field}' holds more than {limit} items, the most the broker forwards.",
        metadata={"field": field, "max": str(limit)},
    )


# --- HTTP+JSON (REST) --------------------------------------------------------------------------


def read_rest(route: RestRoute, body: bytes, query: str, limits: ItemLimits) -> Reading:
    """What the broker judges in a REST request: the path's task, the body, the query string.

    The agent takes a task-scoped operation's task from the path and ignores (or overrides) the
    body's and the query's; a body or query naming another task is refused as ambiguous.
    """
    op = route.operation
    if op.sends_message:
        return read_params(op, body or b"{}", limits)
    pairs = parse_qsl(query, keep_blank_values=True) if query else []
    if op is LIST_TASKS:
        return _rest_list_reading(pairs)
    if route.task_id is None:
        return Reading()
    body_reading = _rest_body(op, body)
    _same_task(route.task_id, [v for k, v in pairs if k in ("id", "taskId", "task_id")])
    _same_task(route.task_id, body_reading[0])
    return Reading(task_id=route.task_id, named_tasks=(route.task_id,), push_url=body_reading[1])


def _rest_body(op: Operation, body: bytes) -> tuple[list[object], str]:
    """The task ids a REST body names (besides the path) and, for a push config, its URL."""
    if not body.strip():
        return [], ""
    try:
        if op is CREATE_PUSH_CONFIG:
            push = _push.decode(body)
            task = _one(push.taskId, push.task_id, "taskId")
            return ([] if task is UNSET else [task]), push.url or ""
        found = _named.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidParamsError(f"Invalid request body: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise JSONParseError(detail=str(exc)) from None
    task = _one(found.taskId, found.task_id, "taskId")
    return [v for v in (found.id, task) if v is not UNSET], ""


def _same_task(path_task: str, named: list[object]) -> None:
    if any(value != path_task for value in named):
        raise AmbiguousRequestError(
            "The path names one task and the body or query string another; the agent reads the"
            " path's. Name the task in the path only.",
            metadata={"field": "taskId"},
        )


def _rest_list_reading(pairs: list[tuple[str, str]]) -> Reading:
    tokens = [v for k, v in pairs if k == "pageToken"]
    if len(tokens) > 1:
        raise AmbiguousRequestError(
            "'pageToken' is given more than once.", metadata={"field": "pageToken"}
        )
    contexts = [v for k, v in pairs if k == "contextId"]
    return Reading(
        context_id=contexts[-1] if contexts else "", page_token=tokens[0] if tokens else None
    )

"""Read the request within its limits and decode only the envelope the broker must inspect.

JSON-RPC: the envelope (jsonrpc, id, method) is decoded; ``params`` stays raw bytes, then a
small typed view of the few params fields the broker needs (task id, push URL) is taken.
REST: the path names the operation and the task. Either way the original body is what is
forwarded, so fields the broker does not know survive.
"""

from __future__ import annotations

from urllib.parse import unquote

import msgspec

from broker.errors import (
    BatchNotSupportedError,
    HeadersTooLargeError,
    InvalidParamsError,
    InvalidRequestError,
    JSONParseError,
    JSONTooDeepError,
    MethodNotFoundError,
    VersionNotSupportedError,
)
from broker.jsonlimits import json_depth_exceeds
from broker.operations import LEGACY_V03_METHODS, OPERATIONS, match_rest
from broker.settings import LimitSettings
from broker.types import CallNext, MediationContext, Outcome

SUPPORTED_MAJOR = "1"
# The skill a request is for, as policy sees it: this header, else message.metadata.skill.
SKILL_HEADER = "a2a-skill"


class _Envelope(msgspec.Struct):
    method: str
    jsonrpc: str = ""
    id: msgspec.Raw = msgspec.Raw(b"null")
    params: msgspec.Raw = msgspec.Raw(b"null")


class _MessageMetadata(msgspec.Struct):
    skill: str = ""


class _MessageRef(msgspec.Struct):
    taskId: str = ""
    metadata: _MessageMetadata | None = None


class _PushConfigRef(msgspec.Struct):
    url: str = ""
    taskId: str = ""


class _SendConfiguration(msgspec.Struct):
    taskPushNotificationConfig: _PushConfigRef | None = None


class SendParams(msgspec.Struct):
    message: _MessageRef | None = None
    configuration: _SendConfiguration | None = None


class TaskParams(msgspec.Struct):
    """Params of task-scoped methods: the task is ``id`` or ``taskId`` depending on the method."""

    id: str = ""
    taskId: str = ""
    url: str = ""


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_send_decoder = msgspec.json.Decoder(SendParams)
_task_decoder = msgspec.json.Decoder(TaskParams)
_any_decoder = msgspec.json.Decoder()
_ID_START = frozenset(bytes([b]) for b in b'"-0123456789n')


class ParseRequest:
    """Enforces header/body/depth limits and the A2A version; fills operation, params, task id."""

    def __init__(self, limits: LimitSettings) -> None:
        self._limits = limits

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        self._check_headers(ctx)
        ctx.body = await ctx.read_body()
        if ctx.body and json_depth_exceeds(ctx.body, self._limits.max_json_depth):
            raise JSONTooDeepError(metadata={"maxDepth": str(self._limits.max_json_depth)})
        if ctx.binding == "jsonrpc":
            self._parse_jsonrpc(ctx)
        else:
            self._parse_rest(ctx)
        check_version(ctx.headers.get("a2a-version", ""))
        ctx.skill = ctx.headers.get(SKILL_HEADER, "").strip() or ctx.skill
        return await call_next(ctx)

    def _check_headers(self, ctx: MediationContext) -> None:
        size = sum(len(k) + len(v) + 4 for k, v in ctx.headers.items())
        if size > self._limits.max_header_bytes:
            raise HeadersTooLargeError(
                metadata={"maxHeaderBytes": str(self._limits.max_header_bytes)}
            )

    def _parse_jsonrpc(self, ctx: MediationContext) -> None:
        env = decode_envelope(ctx.body)
        ctx.jsonrpc_id = env.id
        if env.jsonrpc != "2.0" or bytes(env.id)[:1] not in _ID_START:
            raise InvalidRequestError(
                "'jsonrpc' must be \"2.0\" and 'id' a string, number or null."
            )
        if env.method in LEGACY_V03_METHODS:
            raise VersionNotSupportedError(
                f"'{env.method}' is an A2A 0.3 method; the broker speaks A2A 1.x "
                "(use the 1.0 method names and send 'A2A-Version: 1.0')."
            )
        op = OPERATIONS.get(env.method)
        if op is None:
            raise MethodNotFoundError(f"Method '{env.method}' is not an A2A 1.0 method.")
        ctx.operation = op
        ctx.params = env.params
        ctx.task_id = task_id_from_params(op.task_scoped, op.sends_message, env.params)
        if op.sends_message:
            ctx.skill = skill_from_params(env.params)

    def _parse_rest(self, ctx: MediationContext) -> None:
        # Clients may percent-encode the ':' of "message:send"; match on the decoded path, and
        # forward the path as sent.
        route = match_rest(ctx.http_method, unquote(ctx.rest_tail))
        if route is None:
            raise MethodNotFoundError("No A2A 1.0 HTTP+JSON operation at this method and path.")
        ctx.operation = route.operation
        if ctx.body:
            try:
                _any_decoder.decode(ctx.body)
            except msgspec.DecodeError as exc:
                raise JSONParseError(detail=str(exc)) from None
            ctx.params = msgspec.Raw(ctx.body)
        if route.operation.sends_message and ctx.params is not None:
            ctx.task_id = task_id_from_params(False, True, ctx.params)
            ctx.skill = skill_from_params(ctx.params)
        else:
            ctx.task_id = route.task_id


def decode_envelope(body: bytes) -> _Envelope:
    stripped = body.lstrip()
    if stripped[:1] == b"[":
        raise BatchNotSupportedError
    try:
        return _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(detail=str(exc)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise JSONParseError(detail=str(exc)) from None


def task_id_from_params(task_scoped: bool, sends_message: bool, params: msgspec.Raw) -> str | None:
    """The task a request is about: required for task-scoped methods, optional for sends."""
    try:
        if sends_message:
            send = _send_decoder.decode(params)
            return (send.message.taskId if send.message else "") or None
        if task_scoped:
            task = _task_decoder.decode(params)
            task_id = task.taskId or task.id
            if not task_id:
                raise InvalidParamsError("The request names no task ('id' or 'taskId').")
            return task_id
    except msgspec.DecodeError as exc:
        raise InvalidParamsError(detail=str(exc)) from None
    return None


def skill_from_params(params: msgspec.Raw | None) -> str:
    """``message.metadata.skill`` of a send, or ""."""
    if params is None:
        return ""
    try:
        message = _send_decoder.decode(params).message
    except msgspec.DecodeError:
        return ""
    return message.metadata.skill if message and message.metadata else ""


def push_url_from_params(params: msgspec.Raw | None, sends_message: bool) -> str:
    """The push-notification URL a request asks the agent to call, or ""."""
    if params is None:
        return ""
    try:
        if sends_message:
            config = _send_decoder.decode(params).configuration
            push = config.taskPushNotificationConfig if config else None
            return push.url if push else ""
        return _task_decoder.decode(params).url
    except msgspec.DecodeError as exc:
        raise InvalidParamsError(detail=str(exc)) from None


def check_version(header: str) -> None:
    """A2A 1.x only. An empty header means 0.3 (spec §3.2.6), which the broker does not speak."""
    version = header.strip() or "0.3"
    if version.split(".", 1)[0] != SUPPORTED_MAJOR:
        raise VersionNotSupportedError(metadata={"requestedVersion": version[:32]})

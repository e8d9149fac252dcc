"""Read the request within its limits: the envelope first, the parameters once the target is known.

``ParseRequest`` (before the target is looked up) enforces the header, body, media type, UTF-8
and depth limits, decodes the JSON-RPC envelope (or matches the REST path) into the operation,
and checks the A2A version and the ``A2A-Skill``/``A2A-Deadline`` headers. ``ReadParams``
(after the target and its push capability are known) reads the parameters the broker judges,
exactly as the agent will (``broker.protocols.a2a.reading``). Either way the original body is
what is forwarded, so fields the broker does not know survive.
"""

from __future__ import annotations

import math
from urllib.parse import unquote

import msgspec

from broker.errors import (
    AmbiguousRequestError,
    HeadersTooLargeError,
    InvalidDeadlineError,
    InvalidUtf8Error,
    JSONParseError,
    JSONTooDeepError,
    MethodNotFoundError,
    UnsupportedMediaTypeError,
    VersionNotSupportedError,
)
from broker.protocols.a2a.operations import (
    JSON_MEDIA_TYPES,
    LEGACY_V03_METHODS,
    OPERATIONS,
    match_rest,
)
from broker.protocols.a2a.reading import (
    EnvelopeError,
    ItemLimits,
    Reading,
    check_skill,
    read_envelope,
    read_params,
    read_rest,
)
from broker.protocols.jsonlimits import json_depth_exceeds
from broker.settings import LimitSettings
from broker.types import CallNext, MediationContext, Outcome

SUPPORTED_MAJOR = "1"
# The skill a request is for, as policy sees it: this header, else message.metadata.skill.
SKILL_HEADER = "a2a-skill"
DEADLINE_HEADER = "a2a-deadline"  # seconds the caller gives this hop (it may only shrink)
MIN_DEADLINE_S = 0.001


class ParseRequest:
    """Enforces header/body/type/depth limits and the A2A version; fills the operation."""

    def __init__(self, limits: LimitSettings) -> None:
        self._limits = limits

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        self._check_headers(ctx)
        ctx.body = await ctx.read_body()
        if ctx.body:
            check_json_body(ctx.headers.get("content-type", ""), ctx.body)
            if json_depth_exceeds(ctx.body, self._limits.max_json_depth):
                raise JSONTooDeepError(metadata={"maxDepth": str(self._limits.max_json_depth)})
        if ctx.binding == "jsonrpc":
            _parse_jsonrpc(ctx)
        else:
            _parse_rest(ctx)
        check_version(ctx.headers.get("a2a-version", ""))
        header_skill = ctx.headers.get(SKILL_HEADER, "").strip()
        ctx.skill = check_skill(header_skill, "A2A-Skill") if header_skill else ""
        ctx.deadline_s = requested_deadline(ctx.headers.get(DEADLINE_HEADER))
        return await call_next(ctx)

    def _check_headers(self, ctx: MediationContext) -> None:
        headers = ctx.headers  # each as "name: value\r\n"; summed in C, no step per header
        size = sum(map(len, headers)) + sum(map(len, headers.values())) + 4 * len(headers)
        if size > self._limits.max_header_bytes:
            raise HeadersTooLargeError(
                metadata={"maxHeaderBytes": str(self._limits.max_header_bytes)}
            )


class ReadParams:
    """Reads the parameters the broker judges (``ctx.reading``, ``ctx.task_id``, ``ctx.skill``).

    Runs once the target is known, so that an agent without push answers the push-config
    operations with PushNotificationNotSupported before any parameter is judged.
    """

    def __init__(self, limits: LimitSettings) -> None:
        self._items = ItemLimits(limits.max_message_parts, limits.max_reference_tasks)

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        op = ctx.operation
        assert op is not None  # noqa: S101 - set by ParseRequest
        if ctx.binding == "jsonrpc":
            assert ctx.params is not None  # noqa: S101 - set by ParseRequest
            reading = read_params(op, ctx.params, self._items)
        else:
            route = match_rest(ctx.http_method, unquote(ctx.rest_tail))
            assert route is not None  # noqa: S101 - matched by ParseRequest
            reading = read_rest(route, ctx.body, ctx.query_string, self._items)
        _set_reading(ctx, reading)
        return await call_next(ctx)


def _set_reading(ctx: MediationContext, reading: Reading) -> None:
    if reading.skill and ctx.skill and reading.skill != ctx.skill:
        raise AmbiguousRequestError(
            "'A2A-Skill' and message.metadata.skill name different skills.",
            metadata={"field": "skill"},
        )
    ctx.reading = reading
    ctx.task_id = reading.task_id
    ctx.skill = ctx.skill or reading.skill


def check_json_body(content_type: str, body: bytes) -> None:
    """A body is JSON in UTF-8: a declared media type must say so, and the bytes must be UTF-8.

    A missing Content-Type is read as JSON (the agent does the same). Raises
    ``UnsupportedMediaTypeError`` or ``InvalidUtf8Error``.
    """
    if content_type:
        media, _, params = content_type.partition(";")
        charset = _charset(params)
        if media.strip().lower() not in JSON_MEDIA_TYPES or charset not in ("", "utf-8", "utf8"):
            raise UnsupportedMediaTypeError(metadata={"contentType": content_type[:100]})
    if body.isascii():  # ASCII is UTF-8: checked in place, no decoded copy
        return
    try:
        body.decode("utf-8")  # strings the broker skips are not checked by its decoder
    except UnicodeDecodeError:
        raise InvalidUtf8Error from None


def _charset(params: str) -> str:
    if not params:  # "application/json" as most clients send it
        return ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return ""


def _parse_jsonrpc(ctx: MediationContext) -> None:
    if not ctx.body:
        raise JSONParseError("The request has no body: a JSON-RPC request is a JSON object.")
    try:
        env = read_envelope(ctx.body)
    except EnvelopeError as exc:
        ctx.jsonrpc_id = exc.request_id
        raise exc.error from None
    ctx.jsonrpc_id = env.id
    if env.method in LEGACY_V03_METHODS:
        raise VersionNotSupportedError(
            f"'{env.method}' is an A2A 0.3 method; the broker speaks A2A 1.x "
            "(use the 1.0 method names and send 'A2A-Version: 1.0')."
        )
    op = OPERATIONS.get(env.method)
    if op is None:
        raise MethodNotFoundError(f"Method '{env.method[:100]}' is not an A2A 1.0 method.")
    ctx.operation = op
    ctx.params = env.params


def _parse_rest(ctx: MediationContext) -> None:
    # Clients may percent-encode the ':' of "message:send"; match on the decoded path (as the
    # agent's router does), and forward the path as sent.
    route = match_rest(ctx.http_method, unquote(ctx.rest_tail))
    if route is None:
        raise MethodNotFoundError("No A2A 1.0 HTTP+JSON operation at this method and path.")
    ctx.operation = route.operation
    if ctx.body:
        ctx.params = msgspec.Raw(ctx.body)


def decode_envelope(body: bytes) -> object:
    """The JSON-RPC envelope of ``body``; raises the BrokerError that refuses it."""
    try:
        return read_envelope(body)
    except EnvelopeError as exc:
        raise exc.error from None


def requested_deadline(header: str | None) -> float | None:
    """The deadline in seconds the caller asks for (``A2A-Deadline``), or None if it asks none.

    Raises ``InvalidDeadlineError`` for anything but a finite number of at least 1 ms.
    """
    if header is None or not header.strip():
        return None
    try:
        seconds = float(header)
    except ValueError:
        raise InvalidDeadlineError(metadata={"header": header[:40]}) from None
    if not MIN_DEADLINE_S <= seconds < math.inf:  # NaN fails too
        raise InvalidDeadlineError(metadata={"header": header[:40]})
    return seconds


def check_version(header: str) -> None:
    """A2A 1.x only. An empty header means 0.3 (spec §3.2.6), which the broker does not speak."""
    version = header.strip() or "0.3"
    if version.split(".", 1)[0] != SUPPORTED_MAJOR:
        raise VersionNotSupportedError(metadata={"requestedVersion": version[:32]})

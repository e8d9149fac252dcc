"""One reading of each MCP message: what the broker judges, read exactly as the MCP server will.

The official SDK's Streamable HTTP server decodes a POST body with ``pydantic_core.from_json``
and validates it as ``JSONRPCRequest | JSONRPCNotification | JSONRPCResponse | JSONRPCError``
(members it does not know are ignored; an ``id`` that is neither a string nor an integer turns
a request into a notification, which gets no answer); the method's params are then validated per
protocol revision. Other servers (TypeScript, Go) read the same bytes with their own parsers.
Where two readers could differ, the broker refuses instead of guessing (decision 0046):

* duplicate keys anywhere in the message (first-wins and last-wins parsers disagree):
  ``AmbiguousRequestError``; lone UTF-16 surrogates, NaN/Infinity, numbers out of range, a BOM
  (parsers differ on each): ``JSONParseError``;
* a batch (a JSON array; MCP removed batching in 2025-06-18 and the SDK refuses it):
  ``BatchNotSupportedError``;
* members other than ``jsonrpc``, ``id``, ``method``, ``params``, ``result``, ``error``, a
  message that has both ``method`` and ``result``/``error``, an ``id`` of another type (a float,
  ``true``, ``null`` on a request): ``InvalidRequestError``;
* params that are not an object, or lack the field the broker judges (a ``tools/call`` without a
  string ``name``, a ``resources/read`` without a string ``uri``): ``InvalidParamsError``;
* an ``Mcp-Method``/``Mcp-Name``/``MCP-Protocol-Version`` header that disagrees with the body or
  comes twice: ``McpHeaderMismatchError``.

What passes is read into an ``McpMessage`` with its ``McpOperation`` (the method and the tool,
prompt or resource it acts on), which is what policy judges; the caller's bytes are forwarded
unchanged (or, where the broker must rewrite a field, re-encoded from the same reading).
``tests/property/test_mcp_one_reading.py`` checks the reading against the SDK's own parser.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from broker.errors import (
    AmbiguousRequestError,
    BatchNotSupportedError,
    BrokerError,
    InvalidParamsError,
    InvalidRequestError,
    JSONParseError,
)
from broker.mcp.errors import (
    McpHeaderMismatchError,
    McpNotAcceptableError,
    McpProtocolVersionError,
)

MessageKind = Literal["request", "notification", "response"]
OperationKind = Literal["tool", "prompt", "resource", "list", "lifecycle", "other"]

# Every revision of the protocol the broker relays, oldest first. Revisions up to 2025-11-25
# open a session with `initialize`; 2026-07-28 sends each request on its own, with the version
# and client capabilities in params._meta (the "modern" era of the SDK).
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
KNOWN_VERSIONS = HANDSHAKE_VERSIONS + MODERN_VERSIONS
# The transport spec: a server that gets no MCP-Protocol-Version header assumes this one.
DEFAULT_VERSION = "2025-03-26"
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"

PROTOCOL_VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
SESSION_HEADER = "mcp-session-id"
_ONCE_ONLY_HEADERS = frozenset(
    {PROTOCOL_VERSION_HEADER, METHOD_HEADER, NAME_HEADER, SESSION_HEADER}
)

# Method -> (kind, the params member that names what it acts on).
_NAMED: Mapping[str, tuple[OperationKind, str]] = {
    "tools/call": ("tool", "name"),
    "prompts/get": ("prompt", "name"),
    "resources/read": ("resource", "uri"),
    "resources/subscribe": ("resource", "uri"),
    "resources/unsubscribe": ("resource", "uri"),
}
# The methods whose name the modern transport mirrors in the Mcp-Name header.
_NAME_BEARING = frozenset({"tools/call", "prompts/get", "resources/read"})
LIST_METHODS: Mapping[str, str] = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
_LIFECYCLE = frozenset({"initialize", "ping", "notifications/initialized", "server/discover"})
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)
_MAX_NAME_CHARS = 4096
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class McpOperation:
    """What an MCP request does, as policy judges it.

    ``name`` is the tool or prompt name, or the resource URI (empty for other methods);
    ``cursor`` the page a list method asks for (None: the first).
    """

    method: str
    kind: OperationKind
    name: str = ""
    cursor: str | None = None

    @property
    def action(self) -> str:
        """``method`` or ``method:name``, e.g. ``tools/call:create_issue``."""
        return f"{self.method}:{self.name}" if self.name else self.method


@dataclass(frozen=True, slots=True)
class McpMessage:
    """One MCP JSON-RPC message as the broker read it.

    ``id`` is the id's JSON as sent (None for a notification); ``params`` the decoded params
    (None when absent or null); ``operation`` is set for requests and notifications.
    """

    kind: MessageKind
    method: str
    id: msgspec.Raw | None
    params: dict[str, Any] | None
    operation: McpOperation | None
    protocol_version: str | None = None  # from params._meta (2026-07-28) or initialize
    is_error: bool = False
    payload: dict[str, Any] | None = None  # the whole decoded message


class McpReadError(Exception):
    """A refused message, with the id to answer under (None: the message has none usable)."""

    def __init__(self, error: BrokerError, request_id: msgspec.Raw | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


# --- JSON, read one way only -------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Duplicate(dup)
    return obj


class _Duplicate(Exception):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(body: bytes) -> Any:
    """``body`` decoded as strict JSON. Raises ``McpReadError`` with ``JSONParseError`` or, for
    duplicate keys, ``AmbiguousRequestError``."""
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_float=_finite,
            parse_constant=_no_constant,
        )
    except _Duplicate as dup:
        err = AmbiguousRequestError(
            "The message gives the same key twice in one object; JSON parsers disagree on"
            " which one counts, so the broker does not forward it.",
            metadata={"key": str(dup)[:128]},
        )
        raise McpReadError(err, _salvaged_id(text)) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
        raise McpReadError(JSONParseError(detail=str(exc)[:200])) from None
    if _SURROGATE_ESCAPE.search(body) and not _all_encodable(value):
        raise McpReadError(JSONParseError("The message holds a lone UTF-16 surrogate."))
    return value


def _salvaged_id(text: str) -> msgspec.Raw | None:
    """The id of a message refused for a duplicate key elsewhere, when it has exactly one, so
    the refusal can answer it."""
    outermost: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        outermost[:] = [pairs]  # objects are built inside out: the last one is the message
        return dict(pairs)

    try:
        value = json.loads(text, object_pairs_hook=keep)
    except (ValueError, RecursionError):
        return None
    ids = [v for k, v in outermost[0] if k == "id"] if isinstance(value, dict) else []
    return _read_id({"id": ids[0]}) if len(ids) == 1 else None


def _all_encodable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


# --- the envelope ------------------------------------------------------------------------------


def read_message(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    raw_headers: Iterable[tuple[str, str]] = (),
) -> McpMessage:
    """Read one MCP message a client POSTs. ``headers``: lower-case names; ``raw_headers``: every
    header line as received, so a header sent twice is seen. Raises ``McpReadError``."""
    value = decode_json(body)
    if isinstance(value, list):
        raise McpReadError(BatchNotSupportedError(
            "Batches are not part of MCP since 2025-06-18; send one message per request."
        ))
    if not isinstance(value, dict):
        raise McpReadError(InvalidRequestError("An MCP message is a JSON object."))
    message = _read_envelope(value)
    _check_headers(message, headers or {}, raw_headers)
    return message


def _read_envelope(value: dict[str, Any]) -> McpMessage:
    request_id = _read_id(value)
    unknown = set(value) - _MEMBERS
    if unknown or value.get("jsonrpc") != "2.0":
        what = (f"unknown member '{sorted(unknown)[0][:64]}'" if unknown
                else "'jsonrpc' is not \"2.0\"")
        raise McpReadError(InvalidRequestError(
            f"Not a JSON-RPC 2.0 message ({what})."), request_id)
    has_method = "method" in value
    answers = ("result" in value) + ("error" in value)
    if has_method == bool(answers) or answers > 1:
        raise McpReadError(InvalidRequestError(
            "A message is either a request or notification ('method') or a response ('result'"
            " or 'error'), exactly one of them."), request_id)
    if not has_method:
        return _read_response(value, request_id)
    method = value["method"]
    if not isinstance(method, str):
        raise McpReadError(InvalidRequestError("'method' must be a string."), request_id)
    if "id" in value and request_id is None:
        raise McpReadError(InvalidRequestError(
            "A request's 'id' is a string or an integer; leave it out for a notification."))
    params = value.get("params")
    if params is not None and not isinstance(params, dict):
        raise McpReadError(InvalidParamsError("'params' must be an object."), request_id)
    operation = _read_operation(method, params, request_id)
    return McpMessage(
        kind="request" if request_id is not None else "notification",
        method=method, id=request_id, params=params, operation=operation,
        protocol_version=_declared_version(method, params, request_id), payload=value,
    )


def _read_id(value: dict[str, Any]) -> msgspec.Raw | None:
    """The id as sent if it is one the SDK reads as an id (a string, or an integer that is not a
    boolean), else None."""
    rid = value.get("id")
    if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
        try:
            return msgspec.Raw(_encoder.encode(rid))
        except UnicodeEncodeError:  # a lone surrogate: refused as INVALID_JSON anyway
            return None
    return None


def _read_response(value: dict[str, Any], request_id: msgspec.Raw | None) -> McpMessage:
    if request_id is None and not ("error" in value and value.get("id", 0) is None):
        raise McpReadError(InvalidRequestError(
            "A response's 'id' is the string or integer of the request it answers."))
    is_error = "error" in value
    answer = value["error"] if is_error else value["result"]
    if not isinstance(answer, dict) or (is_error and not _is_error_object(answer)):
        raise McpReadError(InvalidRequestError(
            "'result' must be an object; 'error' an object with an integer 'code' and a string"
            " 'message'."), request_id)
    return McpMessage("response", "", request_id, None, None, is_error=is_error, payload=value)


def _is_error_object(error: dict[str, Any]) -> bool:
    code = error.get("code")
    return (isinstance(code, int) and not isinstance(code, bool)
            and isinstance(error.get("message"), str))


def _read_operation(
    method: str, params: dict[str, Any] | None, request_id: msgspec.Raw | None
) -> McpOperation:
    given = params or {}
    if method in _NAMED:
        kind, member = _NAMED[method]
        return McpOperation(method, kind, _required_str(given, member, method, request_id))
    if method in LIST_METHODS:
        cursor = given.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise McpReadError(InvalidParamsError("'cursor' must be a string."), request_id)
        return McpOperation(method, "list", cursor=cursor)
    if method == "completion/complete":
        return _read_completion(given, request_id)
    return McpOperation(method, "lifecycle" if method in _LIFECYCLE else "other")


def _required_str(
    params: dict[str, Any], member: str, method: str, request_id: msgspec.Raw | None
) -> str:
    found = params.get(member)
    if not isinstance(found, str) or not found or len(found) > _MAX_NAME_CHARS:
        raise McpReadError(InvalidParamsError(
            f"'{method}' needs params.{member}, a non-empty string of at most"
            f" {_MAX_NAME_CHARS} characters."), request_id)
    return found


def _read_completion(params: dict[str, Any], request_id: msgspec.Raw | None) -> McpOperation:
    """completion/complete acts on a prompt's or a resource template's arguments: judged as
    that prompt or resource."""
    ref = params.get("ref")
    kind = ref.get("type") if isinstance(ref, dict) else None
    if kind == "ref/prompt":
        name = _required_str(ref, "name", "completion/complete", request_id)  # type: ignore[arg-type]
        return McpOperation("completion/complete", "prompt", name)
    if kind == "ref/resource":
        uri = _required_str(ref, "uri", "completion/complete", request_id)  # type: ignore[arg-type]
        return McpOperation("completion/complete", "resource", uri)
    raise McpReadError(InvalidParamsError(
        "'completion/complete' needs params.ref of type 'ref/prompt' or 'ref/resource'."),
        request_id)


def _declared_version(
    method: str, params: dict[str, Any] | None, request_id: msgspec.Raw | None
) -> str | None:
    """The protocol version the message itself names: initialize's protocolVersion, or the
    2026-07-28 envelope's params._meta key."""
    if params is None:
        return None
    if method == "initialize":
        found = params.get("protocolVersion")
    else:
        meta = params.get("_meta")
        found = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if found is not None and not isinstance(found, str):
        raise McpReadError(InvalidParamsError("A protocol version is a string."), request_id)
    return found


# --- headers -----------------------------------------------------------------------------------


def _check_headers(
    message: McpMessage, headers: Mapping[str, str], raw_headers: Iterable[tuple[str, str]]
) -> None:
    seen: set[str] = set()
    for name, _ in raw_headers:
        key = name.lower()
        if key in _ONCE_ONLY_HEADERS:
            if key in seen:
                raise McpReadError(McpHeaderMismatchError(
                    f"The header {key} is sent twice.", metadata={"header": key}), message.id)
            seen.add(key)
    if message.kind == "response":
        return
    sent_method = headers.get(METHOD_HEADER)
    if sent_method is not None and sent_method != message.method:
        raise _mismatch(METHOD_HEADER, message)
    sent_name = headers.get(NAME_HEADER)
    if sent_name is not None:
        op = message.operation
        bearing = op is not None and op.method in _NAME_BEARING
        if not bearing or decode_header_value(sent_name) != op.name:  # type: ignore[union-attr]
            raise _mismatch(NAME_HEADER, message)
    sent_version = headers.get(PROTOCOL_VERSION_HEADER)
    declared = message.protocol_version
    if (sent_version is not None and declared is not None and message.method != "initialize"
            and sent_version != declared):
        raise _mismatch(PROTOCOL_VERSION_HEADER, message)


def _mismatch(header: str, message: McpMessage) -> McpReadError:
    return McpReadError(McpHeaderMismatchError(
        f"The header {header} disagrees with the message body.", metadata={"header": header}),
        message.id)


_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


def decode_header_value(value: str) -> str | None:
    """An ``Mcp-Name``/``Mcp-Param-*`` value as the transport spec encodes it: verbatim, or
    ``=?base64?...?=`` around canonical base64 of UTF-8 (None when that is malformed)."""
    found = _B64_SENTINEL.fullmatch(value)
    if found is None:
        return value
    payload = found.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")


def encode_header_value(value: str) -> str:
    """The inverse of ``decode_header_value``: verbatim when printable ASCII without edge
    spaces (and not itself sentinel-shaped), else the base64 sentinel form."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _B64_SENTINEL.fullmatch(
            value):
        return value
    return f"=?base64?{base64.b64encode(value.encode('utf-8')).decode('ascii')}?="


def request_version(headers: Mapping[str, str], message: McpMessage | None = None) -> str:
    """The protocol version a request runs under: the MCP-Protocol-Version header, else what the
    message declares, else the transport's default. Raises ``McpProtocolVersionError`` for a
    revision the broker does not relay."""
    version = headers.get(PROTOCOL_VERSION_HEADER)
    if version is None and message is not None and message.method != "initialize":
        version = message.protocol_version
    version = version or DEFAULT_VERSION
    if version not in KNOWN_VERSIONS:
        raise McpProtocolVersionError(
            f"The broker relays MCP protocol versions {', '.join(KNOWN_VERSIONS)}.",
            metadata={"requested": version[:64]},
        )
    return version


def check_accept(headers: Mapping[str, str]) -> None:
    """A Streamable HTTP client accepts both JSON and SSE answers (the transport requires it;
    the broker relays whichever the server chooses). Raises ``McpNotAcceptableError``."""
    accepted = {part.split(";")[0].strip().lower()
                for part in headers.get("accept", "").split(",")}
    if not {"application/json", "text/event-stream"} <= accepted and "*/*" not in accepted:
        raise McpNotAcceptableError()

"""One reading of MCP messages: what the broker judges is what the official MCP SDK server acts on.

A differential property test. Hypothesis writes messages as JSON *text* (duplicate keys, escaped
key names, unknown members, ids of every JSON type, params of the wrong shape, batches, NaN,
lone surrogates, a BOM, trailing bytes), reads each with ``broker.mcp.reading.read_message`` and
with the SDK's own path (``pydantic_core.from_json`` then ``jsonrpc_message_adapter``, as
``mcp.server.streamable_http`` does, then ``mcp_types.methods.parse_client_request`` for the
params). Whenever both accept a message they agree on its kind, id, method and on the tool,
prompt or resource it acts on; the broker may refuse more. A second test feeds arbitrary bytes:
the reader raises only ``McpReadError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pydantic_core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.inbound import decode_header_value as sdk_decode_header_value
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse
from mcp_types.jsonrpc import jsonrpc_message_adapter
from mcp_types.methods import parse_client_request
from pydantic import ValidationError

from broker.mcp.reading import McpMessage, McpReadError, read_message


@dataclass(frozen=True)
class SdkReading:
    kind: str
    id: Any
    method: str
    name: str | None  # what the method acts on, when the SDK's params validation passes


_SUBJECT = {
    "tools/call": "name", "prompts/get": "name", "resources/read": "uri",
    "resources/subscribe": "uri", "resources/unsubscribe": "uri",
}


def sdk_read(body: bytes) -> SdkReading | None:
    """The message as the SDK's Streamable HTTP server reads it (None: it refuses it)."""
    try:
        raw = pydantic_core.from_json(body)
        message = jsonrpc_message_adapter.validate_python(raw, by_name=False)
    except (ValueError, ValidationError):
        return None
    if isinstance(message, JSONRPCRequest | JSONRPCNotification):
        kind = "request" if isinstance(message, JSONRPCRequest) else "notification"
        rid = message.id if isinstance(message, JSONRPCRequest) else None
        return SdkReading(kind, rid, message.method, _sdk_subject(message.method, message.params))
    assert isinstance(message, JSONRPCResponse | JSONRPCError)
    return SdkReading("response", message.id, "", None)


def _sdk_subject(method: str, params: dict[str, Any] | None) -> str | None:
    if method not in _SUBJECT and method != "completion/complete":
        return None
    try:
        parsed = parse_client_request(method, "2025-11-25", params)
    except (ValidationError, KeyError, ValueError):
        return None
    p = parsed.params  # type: ignore[attr-defined]
    if method == "completion/complete":
        return getattr(p.ref, "name", None) or getattr(p.ref, "uri", None)
    return str(getattr(p, _SUBJECT[method]))


# --- JSON text with everything a real parser can be handed ------------------------------------


def _escape_one(key: str, index: int) -> str:
    index %= len(key)
    return key[:index] + f"\\u{ord(key[index]):04x}" + key[index + 1:]


@st.composite
def key_text(draw: st.DrawFn, key: str) -> str:
    if draw(st.booleans()) and key:
        return '"' + _escape_one(key, draw(st.integers(0, 64))) + '"'
    return json.dumps(key)


NAMES = st.sampled_from([
    '"create_issue"', '"srv__tool"', '""', '"file:///etc/passwd"', '"\\u0063reate"', '1', 'null',
    '"\\ud800"', '"\\ud83d\\ude00"', '["a"]', '"a\\u0000b"', '"\u00e9t\u00e9"',
])
SCALARS = st.sampled_from([
    '1', '-0', '1.0', '1e2', '12345678901234567890123', 'true', 'false', 'null', '"a"', '""',
    '"\\ud800"', 'NaN', 'Infinity', '1e400', '{}', '[]', '"2.0"',
])


@st.composite
def obj_text(draw: st.DrawFn, members: dict[str, st.SearchStrategy[str]]) -> str:
    keys = draw(st.lists(st.sampled_from(sorted(members)), max_size=5, unique=True))
    if keys and draw(st.integers(0, 7)) == 0:
        keys.append(draw(st.sampled_from(keys)))  # a duplicate key, now and then
    parts = [f"{draw(key_text(k))}:{draw(members[k])}" for k in keys]
    return "{" + ",".join(parts) + "}"


REF = obj_text({"type": st.sampled_from(['"ref/prompt"', '"ref/resource"', '"x"', '1']),
                "name": NAMES, "uri": NAMES})
META = obj_text({"io.modelcontextprotocol/protocolVersion": st.sampled_from(
    ['"2026-07-28"', '"2025-11-25"', '1']), "progressToken": SCALARS})
PARAMS = st.one_of(
    obj_text({"name": NAMES, "uri": NAMES, "cursor": st.one_of(NAMES, SCALARS),
              "arguments": st.sampled_from(['{}', '{"a":1}', '[]', 'null', '{"a":1,"a":2}']),
              "ref": REF, "_meta": META,
              "protocolVersion": st.sampled_from(['"2025-11-25"', '1'])}),
    SCALARS,
)
METHODS = st.sampled_from([
    '"tools/call"', '"tools/list"', '"prompts/get"', '"prompts/list"', '"resources/read"',
    '"resources/list"', '"resources/subscribe"', '"completion/complete"', '"initialize"',
    '"ping"', '"notifications/initialized"', '"notifications/cancelled"', '"x/custom"', '1',
    'null', '"tools/c\\u0061ll"',
])
ENVELOPE = {
    "jsonrpc": st.sampled_from(['"2.0"', '"2.00"', '2.0', 'null', '"1.0"']),
    "id": SCALARS,
    "method": METHODS,
    "params": PARAMS,
    "result": st.sampled_from(['{}', '[]', 'null', '{"tools":[]}']),
    "error": st.sampled_from(['{"code":1,"message":"m"}', '{"code":"1","message":"m"}', '{}',
                              '{"code":true,"message":"m"}']),
    "extra": SCALARS,
}


GOOD = {
    "id": st.sampled_from(['1', '"a"', '0', '-7', '12345678901234567890123', '"\\u0031"']),
    "method": st.sampled_from(['"tools/call"', '"tools/list"', '"prompts/get"',
                               '"resources/read"', '"completion/complete"', '"initialize"']),
    "params": obj_text({"name": st.sampled_from(['"create_issue"', '"srv__tool"', '"\\u0063"']),
                        "uri": st.sampled_from(['"file:///a"', '"mem://x"']),
                        "cursor": st.sampled_from(['"c1"', 'null']),
                        "ref": obj_text({"type": st.sampled_from(['"ref/prompt"']),
                                         "name": st.sampled_from(['"p"'])}),
                        "arguments": st.sampled_from(['{}', '{"a":[1,2]}'])}),
    "result": st.sampled_from(['{}', '{"tools":[]}']),
}


@st.composite
def message_text(draw: st.DrawFn) -> bytes:
    # Mostly well-formed shapes (so the interesting comparisons happen), some anything-goes.
    shape = draw(st.sampled_from(["request", "request", "notification", "response", "any"]))
    wanted = {"request": ["jsonrpc", "id", "method", "params"],
              "notification": ["jsonrpc", "method", "params"],
              "response": ["jsonrpc", "id", "result"]}.get(shape, [])
    keys = [k for k in wanted if draw(st.integers(0, 9)) > 0]
    keys += draw(st.lists(st.sampled_from(sorted(ENVELOPE)), max_size=2))
    parts = []
    for k in keys:
        if k == "jsonrpc" and shape != "any":
            value = '"2.0"'
        elif k in GOOD and shape != "any" and draw(st.integers(0, 3)) > 0:
            value = draw(GOOD[k])
        else:
            value = draw(ENVELOPE[k])
        parts.append(f"{draw(key_text(k))}:{value}")
    text = "{" + ",".join(parts) + "}"
    wrap = draw(st.sampled_from(["", "", "", "", "", "", "batch", "bom", "trailing", "space"]))
    text = {"batch": f"[{text}]", "bom": "\ufeff" + text, "trailing": text + " x",
            "space": f" \n{text}\t"}.get(wrap, text)
    return text.encode("utf-8", "surrogatepass")


def broker_read(body: bytes, headers: dict[str, str] | None = None) -> McpMessage | None:
    try:
        return read_message(body, headers)
    except McpReadError:
        return None


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(message_text())
def test_broker_and_sdk_read_every_message_alike(body: bytes) -> None:
    mine = broker_read(body)
    if mine is None:
        return  # the broker may refuse anything
    sdk = sdk_read(body)
    assert sdk is not None, "the broker accepted a message the SDK server refuses"
    assert mine.kind == sdk.kind
    assert mine.method == sdk.method
    mine_id = None if mine.id is None else json.loads(bytes(mine.id))
    assert mine_id == sdk.id and type(mine_id) is type(sdk.id)
    if sdk.name is not None:
        assert mine.operation is not None and mine.operation.name == sdk.name


@settings(max_examples=300, deadline=None)
@given(
    message_text(),
    st.sampled_from([None, "tools/call", "tools/list", "x"]),
    st.sampled_from([None, "create_issue", "=?base64?Y3JlYXRlX2lzc3Vl?=", "=?base64?!!?=", ""]),
)
def test_routing_headers_agree_with_the_body_when_accepted(
    body: bytes, method_header: str | None, name_header: str | None
) -> None:
    headers = {k: v for k, v in (("mcp-method", method_header), ("mcp-name", name_header))
               if v is not None}
    mine = broker_read(body, headers)
    if mine is None or mine.kind == "response":
        return
    if method_header is not None:
        assert method_header == mine.method
    if name_header is not None:
        assert mine.operation is not None
        assert sdk_decode_header_value(name_header) == mine.operation.name


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), message_text(),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                              lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                              max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_the_reader_never_crashes(body: bytes) -> None:
    try:
        read_message(body, {"mcp-method": "tools/call", "mcp-name": "=?base64?x?="},
                     [("Mcp-Method", "a"), ("mcp-method", "b")])
    except McpReadError as refused:
        assert refused.error.code < 0


def test_deep_nesting_is_refused_not_crashed() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":' \
        + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(McpReadError):
        read_message(body)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_header_values_are_encoded_and_decoded_as_the_sdk_does(value: str) -> None:
    from mcp.shared.inbound import encode_header_value as sdk_encode

    from broker.mcp.reading import decode_header_value, encode_header_value

    if any("\ud800" <= c <= "\udfff" for c in value):
        return  # not encodable as UTF-8: no header carries it
    assert encode_header_value(value) == sdk_encode(value)
    assert decode_header_value(encode_header_value(value)) == value
    assert decode_header_value(value) == sdk_decode_header_value(value)

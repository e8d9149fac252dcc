"""The MCP reading, case by case: what is judged, what is refused and with which reason."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

from broker.mcp.reading import (
    DEFAULT_VERSION,
    McpReadError,
    read_message,
    request_version,
)
from broker.mcp.wire import error_reply, sse_frame

MCP_PACKAGE = Path(__file__).parents[2] / "broker" / "mcp"


def refused(body: bytes, headers: dict[str, str] | None = None,
            raw: list[tuple[str, str]] | None = None) -> str:
    with pytest.raises(McpReadError) as caught:
        read_message(body, headers, raw or [])
    return caught.value.error.reason


def test_a_tool_call_is_judged_by_its_tool() -> None:
    msg = read_message(b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
                       b'"params":{"name":"create_issue","arguments":{"title":"x"}}}')
    assert msg.kind == "request" and bytes(msg.id or b"") == b"7"
    assert msg.operation is not None
    assert (msg.operation.kind, msg.operation.name) == ("tool", "create_issue")
    assert msg.operation.action == "tools/call:create_issue"


@pytest.mark.parametrize(("body", "kind", "name"), [
    (b'{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file:///a"}}',
     "resource", "file:///a"),
    (b'{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet"}}',
     "prompt", "greet"),
    (b'{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":'
     b'{"type":"ref/prompt","name":"greet"},"argument":{"name":"a","value":"b"}}}',
     "prompt", "greet"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"abc"}}', "list", ""),
    (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}',
     "lifecycle", ""),
    (b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}',
     "other", ""),
])
def test_the_operation_names_what_the_method_acts_on(body: bytes, kind: str, name: str) -> None:
    msg = read_message(body)
    assert msg.operation is not None
    assert (msg.operation.kind, msg.operation.name) == (kind, name)


def test_a_list_keeps_its_cursor() -> None:
    msg = read_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"c"}}')
    assert msg.operation is not None and msg.operation.cursor == "c"


def test_notifications_and_responses_are_told_apart() -> None:
    note = read_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert note.kind == "notification" and note.id is None
    answer = read_message(b'{"jsonrpc":"2.0","id":"s1","result":{"action":"accept"}}')
    assert answer.kind == "response" and not answer.is_error
    error = read_message(b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m"}}')
    assert error.kind == "response" and error.is_error


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}',
     "AMBIGUOUS_REQUEST"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",'
     b'"arguments":{"x":1,"x":2}}}', "AMBIGUOUS_REQUEST"),
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', "BATCH_NOT_SUPPORTED"),
    (b'{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{"name":"a"}}',
     "INVALID_REQUEST"),  # the SDK would take it for a notification
    (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', "INVALID_REQUEST"),
    (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', "INVALID_REQUEST"),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', "INVALID_REQUEST"),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}', "INVALID_REQUEST"),
    (b'{"jsonrpc":"2.1","id":1,"method":"ping"}', "INVALID_REQUEST"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}', "INVALID_PARAMS"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', "INVALID_PARAMS"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}', "INVALID_PARAMS"),
    (b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":""}}',
     "INVALID_PARAMS"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":3}}', "INVALID_PARAMS"),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',
     "INVALID_JSON"),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', "INVALID_JSON"),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1e999}}', "INVALID_JSON"),
    (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}', "INVALID_JSON"),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping"} {}', "INVALID_JSON"),
    (b'"ping"', "INVALID_REQUEST"),
])
def test_what_could_be_read_two_ways_is_refused(body: bytes, reason: str) -> None:
    assert refused(body) == reason


def test_a_refusal_answers_under_the_request_id_when_there_is_one() -> None:
    with pytest.raises(McpReadError) as caught:
        read_message(b'{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{}}')
    reply = error_reply(caught.value.error, caught.value.request_id)
    body = msgspec.json.decode(reply.body)
    assert reply.status == 200 and body["id"] == "q"
    assert body["error"]["code"] == -32602
    assert body["error"]["data"][0]["reason"] == "INVALID_PARAMS"


TOOL_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_issue"}}'


@pytest.mark.parametrize("headers", [
    {"mcp-method": "tools/call", "mcp-name": "create_issue"},
    {"mcp-method": "tools/call", "mcp-name": "=?base64?Y3JlYXRlX2lzc3Vl?="},
    {},
])
def test_routing_headers_that_agree_pass(headers: dict[str, str]) -> None:
    assert read_message(TOOL_CALL, headers).operation is not None


@pytest.mark.parametrize(("headers", "raw"), [
    ({"mcp-method": "tools/list"}, []),
    ({"mcp-name": "delete_repo"}, []),
    ({"mcp-name": "=?base64?!!?="}, []),
    ({}, [("Mcp-Name", "create_issue"), ("mcp-name", "delete_repo")]),
    ({}, [("Mcp-Session-Id", "a"), ("mcp-session-id", "b")]),
])
def test_routing_headers_that_disagree_are_refused(
    headers: dict[str, str], raw: list[tuple[str, str]]
) -> None:
    assert refused(TOOL_CALL, headers, raw) == "MCP_HEADER_MISMATCH"


def test_a_name_header_on_a_method_without_a_name_is_refused() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    assert refused(body, {"mcp-name": "x"}) == "MCP_HEADER_MISMATCH"


def test_the_version_header_must_match_the_envelope_of_2026() -> None:
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":'
            b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}')
    msg = read_message(body, {"mcp-protocol-version": "2026-07-28"})
    assert request_version({"mcp-protocol-version": "2026-07-28"}, msg) == "2026-07-28"
    assert refused(body, {"mcp-protocol-version": "2025-11-25"}) == "MCP_HEADER_MISMATCH"


def test_protocol_versions() -> None:
    assert request_version({}) == DEFAULT_VERSION
    assert request_version({"mcp-protocol-version": "2025-06-18"}) == "2025-06-18"
    from broker.mcp.errors import McpProtocolVersionError

    with pytest.raises(McpProtocolVersionError):
        request_version({"mcp-protocol-version": "1999-01-01"})


def test_sse_frames_keep_multi_line_payloads_readable() -> None:
    frame = sse_frame(b'{\n"a": 1\n}', event_id=b"7")
    assert frame == b'id: 7\r\ndata: {\r\ndata: "a": 1\r\ndata: }\r\n\r\n'


# The MCP pipeline's call context and stages (placed on their floors by test_import_floors);
# every other module of the package is the protocol layer, which reads and writes MCP only.
# The MCP modules that plug the protocol layer into the broker (its stages, and the run-time
# server directory over the stores and the egress rules): they may import the broker's parts.
MCP_STAGE_MODULES = {
    "context", "stages", "audit", "forward", "virtual", "approvals", "datacontrols", "listen",
    "directory",
}


def test_the_mcp_package_imports_nothing_from_the_sdk() -> None:
    """Decision 0045: the broker relays MCP bytes; the SDK is for tests. The protocol layer
    depends on nothing of the broker but errors, types, settings and the other protocol
    formats (one SSE parser)."""
    for source in MCP_PACKAGE.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"mcp", "mcp_types"}, source.name
                if name.startswith("broker.") and source.stem not in MCP_STAGE_MODULES:
                    allowed = ("broker.errors", "broker.types", "broker.settings", "broker.mcp",
                               "broker.protocols")
                    assert name.startswith(allowed), f"{source.name} imports {name}"


def test_a_duplicate_key_refusal_answers_under_the_id_when_it_is_unique() -> None:
    with pytest.raises(McpReadError) as caught:
        read_message(b'{"jsonrpc":"2.0","id":"q","method":"tools/call",'
                     b'"params":{"name":"a","name":"b"}}')
    assert bytes(caught.value.request_id or b"") == b'"q"'
    with pytest.raises(McpReadError) as twice:
        read_message(b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}')
    assert twice.value.request_id is None


def test_a_lone_surrogate_id_beside_a_duplicate_key_is_refused_without_an_id() -> None:
    with pytest.raises(McpReadError) as caught:
        read_message(b'{"jsonrpc":"2.0","id":"\\ud800","jsonrpc":"2.0"}')
    assert caught.value.error.reason == "AMBIGUOUS_REQUEST" and caught.value.request_id is None


@pytest.mark.parametrize("body", [
    b'{"a":{"b":1,"b":2}}', b'[{"x":1},{"y":[{"k":1,"k":1}]}]', b'{"\\u0061":1,"a":2}',
    b'{"s":"\\":\\"","s":1}',
])
def test_duplicates_are_found_at_any_depth_and_however_spelt(body: bytes) -> None:
    from broker.mcp.reading import decode_json

    with pytest.raises(McpReadError) as caught:
        decode_json(body)
    assert caught.value.error.reason == "AMBIGUOUS_REQUEST"


@pytest.mark.parametrize("body", [
    b'{"a":"x\\":1","b":[":",{"c":"\\"\\\\"}]}', b'{"k" : {"k": {"k": []}}}', b'["a:", "b"]',
])
def test_colons_and_quotes_inside_strings_are_not_keys(body: bytes) -> None:
    from broker.mcp.reading import decode_json

    assert decode_json(body) is not None

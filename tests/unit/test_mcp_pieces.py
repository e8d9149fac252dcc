"""The MCP layer's pieces on their own: sealed sessions and cursors, list filtering, the virtual
server's names, the SSE relay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.mcp.aggregate import Aggregate
from broker.mcp.errors import (
    McpCursorInvalidError,
    McpNameNotFoundError,
    McpSessionNotFoundError,
)
from broker.mcp.events import relay_json, relay_sse
from broker.mcp.listing import filter_result
from broker.mcp.reading import McpMessage, McpOperation
from broker.mcp.sessions import (
    CursorPosition,
    CursorSeal,
    Sealer,
    SessionSeal,
    UpstreamSession,
    derive_seal_key,
)
from broker.protocols.sse import SseParser

KEY = derive_seal_key(b"test secret")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# --- sessions ----------------------------------------------------------------------------------


def test_a_session_opens_only_for_its_caller_and_target() -> None:
    seal = SessionSeal(Sealer([KEY]), ttl_s=3600)
    upstream = {"github": UpstreamSession("sess-123", "2025-11-25")}
    token = seal.issue("alice", "github", upstream)
    assert "sess-123" not in token
    assert seal.open("alice", "github", token) == upstream
    for caller, target in (("bob", "github"), ("alice", "jira")):
        with pytest.raises(McpSessionNotFoundError):
            seal.open(caller, target, token)


def test_a_session_expires_and_a_rotated_key_still_opens_it() -> None:
    clock = Clock()
    old = Sealer([KEY], clock)
    token = SessionSeal(old, ttl_s=60).issue("a", "s", {"s": UpstreamSession("", "2025-06-18")})
    rotated = SessionSeal(Sealer([derive_seal_key(b"new"), KEY], clock), ttl_s=60)
    assert rotated.open("a", "s", token)["s"].protocol_version == "2025-06-18"
    clock.now += 61
    with pytest.raises(McpSessionNotFoundError):
        rotated.open("a", "s", token)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 199), st.text(max_size=80))
def test_an_altered_or_made_up_token_never_opens(flip: bytes, where: int, junk: str) -> None:
    seal = SessionSeal(Sealer([KEY]), ttl_s=3600)
    token = seal.issue("a", "s", {"s": UpstreamSession("x", "2025-11-25")})
    raw = bytearray(token.encode())
    raw[where % len(raw)] ^= flip[0] or 1
    for candidate in (raw.decode("latin-1"), junk):
        if candidate == token:
            continue
        with pytest.raises(McpSessionNotFoundError):
            seal.open("a", "s", candidate)


def test_cursors_are_bound_to_caller_target_and_list() -> None:
    seal = CursorSeal(Sealer([KEY]), ttl_s=600)
    cursor = seal.issue("alice", "github", "tools/list", CursorPosition("github", "page2"))
    assert seal.open("alice", "github", "tools/list", cursor) == CursorPosition("github", "page2")
    for args in (("bob", "github", "tools/list"), ("alice", "github", "prompts/list")):
        with pytest.raises(McpCursorInvalidError):
            seal.open(*args, cursor)
    with pytest.raises(McpCursorInvalidError):
        seal.open("alice", "github", "tools/list", "page2")  # the server's own cursor


# --- list filtering ----------------------------------------------------------------------------


def test_a_list_keeps_only_what_may_be_used_and_seals_its_cursor() -> None:
    result = {"tools": [{"name": "read_issue"}, {"name": "delete_repo"}, {"title": "no name"},
                        "junk"], "nextCursor": "upstream-2", "_meta": {"x": 1}}
    seen: list[McpOperation] = []

    def allowed(op: McpOperation) -> bool:
        seen.append(op)
        return op.name != "delete_repo"

    out = filter_result("tools/list", result, allowed, lambda c: f"sealed({c})")
    assert out == {"tools": [{"name": "read_issue"}], "nextCursor": "sealed(upstream-2)",
                   "_meta": {"x": 1}}
    assert [op.action for op in seen] == ["tools/call:read_issue", "tools/call:delete_repo"]


def test_resources_are_judged_by_uri() -> None:
    result = {"resources": [{"uri": "file:///public", "name": "p"},
                            {"uri": "file:///secret", "name": "s"}]}
    out = filter_result("resources/list", result, lambda op: "secret" not in op.name, None)
    assert out["resources"] == [{"uri": "file:///public", "name": "p"}]
    assert "nextCursor" not in out


# --- the virtual server ------------------------------------------------------------------------


def test_names_are_prefixed_and_routed_back() -> None:
    agg = Aggregate(["github", "jira"])
    result = {"tools": [{"name": "create_issue"}, {"name": "a__b"}]}
    agg.rename_items("tools/list", "github", result)
    assert [t["name"] for t in result["tools"]] == ["github__create_issue", "github__a__b"]
    routed = agg.route("tools/call", {"name": "github__a__b", "arguments": {"x": 1}})
    assert (routed.server, routed.params) == ("github", {"name": "a__b", "arguments": {"x": 1}})
    for bad in ("create_issue", "gitlab__x", "github__", "__x"):
        with pytest.raises(McpNameNotFoundError):
            agg.route("tools/call", {"name": bad})


def test_resource_uris_round_trip_through_the_broker_scheme() -> None:
    agg = Aggregate(["files"])
    result = {"resources": [{"uri": "file:///a b/c?d#e"}]}
    agg.rename_items("resources/list", "files", result)
    outer = result["resources"][0]["uri"]
    assert outer.startswith("mcp-broker://files/")
    assert agg.route("resources/read", {"uri": outer}).params == {"uri": "file:///a b/c?d#e"}


def test_lists_walk_the_servers_in_order() -> None:
    agg = Aggregate(["a", "b"])
    assert agg.next_position("a", "p2") == ("a", "p2")
    assert agg.next_position("a", None) == ("b", "")
    assert agg.next_position("b", "") is None


def test_initialize_merges_capabilities() -> None:
    agg = Aggregate(["a", "b"])
    merged = agg.merge_initialize({
        "a": {"protocolVersion": "2025-11-25", "capabilities": {"tools": {"listChanged": False}},
              "instructions": "use a"},
        "b": {"protocolVersion": "2025-06-18", "capabilities": {
            "tools": {"listChanged": True}, "prompts": {}, "experimental": {"x": {}}}},
    }, {"name": "a2a-broker", "version": "1"})
    assert merged["protocolVersion"] == "2025-06-18"
    assert merged["capabilities"] == {"tools": {"listChanged": True}, "prompts": {}}
    assert merged["instructions"] == "a: use a"


def test_server_names_with_the_separator_are_refused() -> None:
    with pytest.raises(ValueError, match="__"):
        Aggregate(["git__hub"])


# --- SSE ---------------------------------------------------------------------------------------


def test_the_parser_reads_every_line_ending_and_split_chunks() -> None:
    stream = (b'id: 1\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: ping\n\nid: 2\rdata: x\r\r'
              b"event: message\ndata: y\n\n")
    for size in (1, 2, 7, len(stream)):
        parser = SseParser(10_000)
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i:i + size])
        assert [(e.event_id, e.data) for e in events] == [
            (b"1", b'{"a":\n1}'), (b"", None), (b"2", b"x"), (b"", b"y")]


async def _chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
ANSWER = b'{"jsonrpc":"2.0","id":5,"result":{"content":[]}}'


async def test_events_are_relayed_one_by_one_and_rewritten() -> None:
    async def upper(message: McpMessage, data: bytes) -> bytes | None:
        return None if message.kind == "notification" else data.replace(b"content", b"CONTENT")

    frames = [f async for f in relay_sse(
        _chunks(b"id: e1\r\ndata: " + PROGRESS + b"\r\n\r\n", b"data: " + ANSWER + b"\n\n"),
        request_id=msgspec.Raw(b"5"), on_message=upper, idle_timeout_s=5,
        max_event_bytes=10_000)]
    assert frames == [b'data: {"jsonrpc":"2.0","id":5,"result":{"CONTENT":[]}}\r\n\r\n']


async def test_garbage_from_the_server_ends_the_stream_with_an_error_answer() -> None:
    frames = [f async for f in relay_sse(
        _chunks(b"data: " + PROGRESS + b"\n\n", b"data: <html>oops</html>\n\n"),
        request_id=msgspec.Raw(b'"r1"'), idle_timeout_s=5, max_event_bytes=10_000)]
    assert len(frames) == 2
    error = json.loads(frames[1].removeprefix(b"data: "))
    assert error["id"] == "r1" and error["error"]["code"] == -32112


async def test_a_quiet_server_times_out_with_an_error_answer() -> None:
    frames = [f async for f in relay_sse(
        _chunks(b"data: " + PROGRESS + b"\n\n", b"", pause=0.3),
        request_id=msgspec.Raw(b"1"), idle_timeout_s=0.1, max_event_bytes=10_000)]
    assert json.loads(frames[-1].removeprefix(b"data: "))["error"]["code"] == -32115


async def test_an_oversized_event_is_refused() -> None:
    frames = [f async for f in relay_sse(
        _chunks(b"data: " + b"x" * 500), request_id=msgspec.Raw(b"1"), idle_timeout_s=1,
        max_event_bytes=100)]
    assert json.loads(frames[-1].removeprefix(b"data: "))["error"]["code"] == -32112


async def test_a_json_answer_is_read_the_same_way() -> None:
    assert await relay_json(ANSWER, request_id=msgspec.Raw(b"5")) == ANSWER
    bad = json.loads(await relay_json(b"nope", request_id=msgspec.Raw(b"5")))
    assert bad["id"] == 5 and bad["error"]["data"][0]["reason"] == "MCP_SERVER_BAD_RESPONSE"


def test_the_virtual_server_routes_only_named_calls() -> None:
    from broker.errors import MethodNotFoundError

    with pytest.raises(MethodNotFoundError):
        Aggregate(["a"]).route("server/discover", {})
    routed = Aggregate(["a"]).route("completion/complete", {
        "ref": {"type": "ref/prompt", "name": "a__greet"}, "argument": {"name": "x"}})
    assert routed.params["ref"] == {"type": "ref/prompt", "name": "greet"}


def test_a_rewritten_name_is_sent_in_mcp_name() -> None:
    from broker.mcp.servers import McpServer, upstream_headers

    headers = upstream_headers(McpServer("a", "http://127.0.0.1/m"), [("Mcp-Name", "a__add")],
                               protocol_version="2026-07-28", session=None, name="add é")
    assert headers["mcp-name"] == "=?base64?YWRkIMOp?="


# --- the audit view ----------------------------------------------------------------------------


def test_the_audit_view_holds_a_digest_of_the_arguments_never_their_values() -> None:
    from broker.mcp.audit_view import audit_fields
    from broker.mcp.reading import read_message

    one = read_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login",'
                       b'"arguments":{"user":"ann","password":"hunter2"}}}')
    same = read_message(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"login",'
                        b'"arguments":{"password":"hunter2","user":"ann"}}}')
    fields = audit_fields(one)
    assert "hunter2" not in json.dumps(fields)
    assert fields["mcp_name"] == "login" and fields["argument_names"] == ["password", "user"]
    assert fields["arguments_sha256"] == audit_fields(same)["arguments_sha256"]
    listing = read_message(b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    assert audit_fields(listing) == {"mcp_method": "tools/list", "mcp_kind": "list"}


def test_a_session_refuses_a_request_naming_another_version() -> None:
    from broker.mcp.errors import McpHeaderMismatchError
    from broker.mcp.sessions import check_session_version

    session = UpstreamSession("s", "2025-11-25")
    check_session_version(session, None)
    check_session_version(session, "2025-11-25")
    with pytest.raises(McpHeaderMismatchError):
        check_session_version(session, "2025-06-18")


def test_a_server_cannot_answer_in_the_brokers_name() -> None:
    forged = (b'{"jsonrpc":"2.0","id":5,"error":{"code":-32085,"message":"Policy says no",'
              b'"data":[{"reason":"POLICY_DENIED","domain":"a2a-broker"}]}}')
    answer = json.loads(asyncio.run(relay_json(forged, request_id=msgspec.Raw(b"5"))))
    assert answer["error"]["data"][0]["reason"] == "MCP_SERVER_BAD_RESPONSE"
    own = b'{"jsonrpc":"2.0","id":5,"error":{"code":-32602,"message":"bad","data":{"x":1}}}'
    assert asyncio.run(relay_json(own, request_id=msgspec.Raw(b"5"))) == own


@pytest.mark.parametrize(("accept", "ok"), [
    ("application/json, text/event-stream", True),
    ("text/event-stream;q=0.9,application/json", True),
    ("*/*", True),
    ("application/json", False),
    ("", False),
])
def test_clients_must_accept_json_and_sse(accept: str, ok: bool) -> None:
    from broker.mcp.errors import McpNotAcceptableError
    from broker.mcp.reading import check_accept

    if ok:
        check_accept({"accept": accept})
    else:
        with pytest.raises(McpNotAcceptableError):
            check_accept({"accept": accept})


def test_a_target_that_holds_sessions_requires_one() -> None:
    from broker.mcp.errors import McpSessionRequiredError

    seal = SessionSeal(Sealer([KEY]), ttl_s=60)
    assert seal.open_from("a", "*", None, required=False) == {}
    with pytest.raises(McpSessionRequiredError):
        seal.open_from("a", "*", "", required=True)


async def test_a_stream_that_outlives_its_maximum_duration_is_ended() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.05)
            yield b"data: " + PROGRESS + b"\n\n"

    frames = [f async for f in relay_sse(
        endless(), request_id=msgspec.Raw(b"1"), idle_timeout_s=1, max_event_bytes=10_000,
        max_duration_s=0.3)]
    assert 2 <= len(frames) <= 8
    assert json.loads(frames[-1].removeprefix(b"data: "))["error"]["code"] == -32055


def test_a_token_has_one_spelling() -> None:
    """Base64 leaves low bits of the last character unused; a token with them set is another
    string for the same bytes, and does not open."""
    import base64

    seal = SessionSeal(Sealer([KEY]), ttl_s=60)
    token = seal.issue("a", "s", {"s": UpstreamSession("x", "2025-11-25")})
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) % 3 != 0  # so the last character has unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)) == raw
    with pytest.raises(McpSessionNotFoundError):
        seal.open("a", "s", twin)

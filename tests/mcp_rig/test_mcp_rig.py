"""``broker.mcp`` against real MCP SDK servers (own processes) and real MCP SDK clients, through
the test-only passthrough built from its pieces (conftest.py says who is who)."""

from __future__ import annotations

import json
import time

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from testkit.mcp_client import connect, first_mcp_error, text_of, tool_names

from .conftest import RunningPassthrough

pytestmark = pytest.mark.e2e
ALICE = "tok-alice"


async def test_lists_hold_only_what_the_caller_may_use(passthrough: RunningPassthrough) -> None:
    async with connect(f"{passthrough.url}/alpha", ALICE) as alice:
        names = await tool_names(alice)
    assert "add" in names and "filler_11" in names and "create_issue" in names
    assert "delete_repo" not in names
    assert len(names) == len(set(names)) == 19  # 20 tools, one hidden, over four pages
    async with connect(f"{passthrough.url}/alpha", "tok-bob") as bob:
        assert "create_issue" not in await tool_names(bob)


async def test_an_allowed_call_goes_through_and_a_denied_one_is_refused(
    passthrough: RunningPassthrough,
) -> None:
    async with connect(f"{passthrough.url}/alpha", ALICE) as alice:
        assert text_of(await alice.call_tool("add", {"a": 2, "b": 3})) == "5"
        with pytest.raises(MCPError) as denied:
            await alice.call_tool("delete_repo", {"repo": "prod"})
    assert denied.value.code == -32085
    assert denied.value.data[0]["reason"] == "POLICY_DENIED"


async def test_json_answers_are_relayed_too(passthrough: RunningPassthrough) -> None:
    async with connect(f"{passthrough.url}/beta", "tok-bob") as bob:
        assert text_of(await bob.call_tool("create_issue", {"title": "t"})) == "beta opened: t"


async def test_the_server_gets_the_brokers_credential_never_the_callers(
    passthrough: RunningPassthrough,
) -> None:
    async with connect(f"{passthrough.url}/alpha", ALICE) as alice:
        seen = json.loads(text_of(await alice.call_tool("seen_headers", {})))
    assert seen["authorization"] == "Bearer ALPHA_TOKEN"
    assert seen["a2a-delegation"] == "hop-token-for-alpha"
    assert "tok-alice" not in json.dumps(seen)


async def test_progress_is_relayed_as_it_happens(passthrough: RunningPassthrough) -> None:
    arrived: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrived.append((time.monotonic(), progress))

    async with connect(f"{passthrough.url}/alpha", ALICE) as alice:
        result = await alice.call_tool("count_slowly", {"steps": 5},
                                       progress_callback=on_progress)
        done = time.monotonic()
    assert text_of(result) == "counted to 5"
    assert [p for _, p in arrived] == [1, 2, 3, 4, 5]
    # The first step reached the client while the tool still had four steps (1.2 s) to go: the
    # stream is relayed event by event, not buffered until the answer.
    assert done - arrived[0][0] > 0.9


async def test_a_server_that_hangs_gets_a_timeout_error(passthrough: RunningPassthrough) -> None:
    async with connect(f"{passthrough.url}/alpha", ALICE) as alice:
        with pytest.raises(MCPError) as timed_out:
            await alice.call_tool("hang", {})
        assert timed_out.value.data[0]["reason"] == "MCP_SERVER_TIMEOUT"
        assert text_of(await alice.call_tool("add", {"a": 1, "b": 1})) == "2"  # still usable


async def test_a_server_that_answers_garbage_gets_an_error(passthrough: RunningPassthrough) -> None:
    with pytest.raises(BaseExceptionGroup) as failed:  # the SDK raises from its task group
        async with connect(f"{passthrough.url}/junk", ALICE):
            pass
    garbage = first_mcp_error(failed.value)
    assert garbage.code == -32112
    assert garbage.data[0]["reason"] == "MCP_SERVER_BAD_RESPONSE"


# --- sessions and cursors, at the HTTP level ---------------------------------------------------

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"}}}


def sse_messages(response: httpx2.Response) -> list[dict[str, object]]:
    if response.headers["content-type"].startswith("application/json"):
        return [response.json()]
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and len(line) > 6]


async def test_one_caller_cannot_use_anothers_session(passthrough: RunningPassthrough) -> None:
    url = f"{passthrough.url}/alpha"
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(url, json=INIT, headers={**HEADERS,
                                                          "authorization": "Bearer tok-alice"})
        session = opened.headers["mcp-session-id"]
        assert len(session) > 40  # sealed: not the server's own id
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        mine = await http.post(url, json=call, headers={
            **HEADERS, "authorization": "Bearer tok-alice", "mcp-session-id": session,
            "mcp-protocol-version": "2025-11-25"})
        assert mine.status_code == 200 and sse_messages(mine)[-1]["result"]
        stolen = await http.post(url, json=call, headers={
            **HEADERS, "authorization": "Bearer tok-bob", "mcp-session-id": session,
            "mcp-protocol-version": "2025-11-25"})
        assert stolen.status_code == 404
        assert stolen.json()["error"]["data"][0]["reason"] == "MCP_SESSION_NOT_FOUND"
        elsewhere = await http.post(f"{passthrough.url}/beta", json=call, headers={
            **HEADERS, "authorization": "Bearer tok-alice", "mcp-session-id": session})
        assert elsewhere.status_code == 404


async def test_a_session_keeps_the_version_it_was_opened_with(
    passthrough: RunningPassthrough,
) -> None:
    url = f"{passthrough.url}/alpha"
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(url, json=INIT, headers={**HEADERS,
                                                          "authorization": f"Bearer {ALICE}"})
        assert opened.json()["result"]["protocolVersion"] == "2025-11-25"
        other = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                headers={**HEADERS, "authorization": f"Bearer {ALICE}",
                                         "mcp-session-id": opened.headers["mcp-session-id"],
                                         "mcp-protocol-version": "2025-06-18"})
    assert other.json()["error"]["data"][0]["reason"] == "MCP_HEADER_MISMATCH"


async def test_the_virtual_server_needs_a_session_and_every_client_both_answer_kinds(
    passthrough: RunningPassthrough,
) -> None:
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}
    async with httpx2.AsyncClient(timeout=10) as http:
        no_session = await http.post(passthrough.url, json=call, headers={
            **HEADERS, "authorization": f"Bearer {ALICE}", "mcp-protocol-version": "2025-11-25"})
        json_only = await http.post(f"{passthrough.url}/alpha", json=call, headers={
            "accept": "application/json", "authorization": f"Bearer {ALICE}"})
    assert no_session.status_code == 400
    assert no_session.json()["error"]["data"][0]["reason"] == "MCP_SESSION_REQUIRED"
    assert json_only.status_code == 406
    assert json_only.json()["error"]["data"][0]["reason"] == "MCP_NOT_ACCEPTABLE"


async def test_cursors_cannot_be_made_up(passthrough: RunningPassthrough) -> None:
    url = f"{passthrough.url}/alpha"
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(url, json=INIT, headers={**HEADERS,
                                                          "authorization": "Bearer tok-alice"})
        headers = {**HEADERS, "authorization": "Bearer tok-alice",
                   "mcp-session-id": opened.headers["mcp-session-id"],
                   "mcp-protocol-version": "2025-11-25"}
        first = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                headers=headers)
        cursor = sse_messages(first)[-1]["result"]["nextCursor"]  # type: ignore[index]
        assert cursor != "5"  # the server's own cursor never reaches the caller
        # One character of the broker's cursor changed (in the middle, where every bit is data:
        # a changed tail, such as "AA", is no change at all when the cursor already ends so).
        middle = len(cursor) // 2
        tampered = cursor[:middle] + ("B" if cursor[middle] != "B" else "C") + cursor[middle + 1:]
        for forged in ("5", "10", tampered):
            refused = await http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list",
                                                 "params": {"cursor": forged}}, headers=headers)
            assert refused.json()["error"]["data"][0]["reason"] == "MCP_CURSOR_INVALID"


async def test_an_ambiguous_message_is_refused_before_it_reaches_the_server(
    passthrough: RunningPassthrough,
) -> None:
    body = (b'{"jsonrpc":"2.0","id":9,"method":"tools/call",'
            b'"params":{"name":"add","name":"delete_repo","arguments":{}}}')
    async with httpx2.AsyncClient(timeout=10) as http:
        refused = await http.post(f"{passthrough.url}/alpha", content=body, headers={
            **HEADERS, "authorization": "Bearer tok-alice"})
    assert refused.json()["error"]["data"][0]["reason"] == "AMBIGUOUS_REQUEST"
    assert refused.json()["id"] == 9


# --- the virtual server ------------------------------------------------------------------------


async def test_the_virtual_server_offers_every_server_under_one_url(
    passthrough: RunningPassthrough,
) -> None:
    async with connect(passthrough.url, ALICE) as alice:
        assert alice.server_info is not None and "a2a-broker" in alice.server_info.name
        assert alice.instructions is not None and "alpha: the alpha test server" in (
            alice.instructions)
        names = await tool_names(alice)
        assert {"alpha__whoami", "beta__whoami", "beta__filler_11"} <= set(names)
        assert not [n for n in names if n.endswith("delete_repo") or n.startswith("junk")]
        assert text_of(await alice.call_tool("beta__whoami", {})) == "beta"
        assert text_of(await alice.call_tool("alpha__add", {"a": 4, "b": 5})) == "9"
        with pytest.raises(MCPError) as denied:
            await alice.call_tool("beta__delete_repo", {"repo": "x"})
        assert denied.value.data[0]["reason"] == "POLICY_DENIED"
        with pytest.raises(MCPError) as unknown:
            await alice.call_tool("junk__anything", {})
        assert unknown.value.data[0]["reason"] == "MCP_NAME_NOT_FOUND"


async def test_policy_on_the_virtual_server_is_per_underlying_server(
    passthrough: RunningPassthrough,
) -> None:
    async with connect(passthrough.url, "tok-bob") as bob:
        names = set(await tool_names(bob))
        assert "beta__create_issue" in names and "alpha__create_issue" not in names
        with pytest.raises(MCPError):
            await bob.call_tool("alpha__create_issue", {"title": "t"})
        assert text_of(await bob.call_tool("beta__create_issue", {"title": "t"})) == (
            "beta opened: t")


# --- protocol 2026-07-28 (no sessions; routing headers) ----------------------------------------


async def test_clients_of_2026_go_through_one_server(passthrough: RunningPassthrough) -> None:
    async with connect(f"{passthrough.url}/alpha", ALICE, mode="auto") as alice:
        assert alice.protocol_version == "2026-07-28"
        names = await tool_names(alice)
        assert "delete_repo" not in names and "add" in names
        assert text_of(await alice.call_tool("add", {"a": 20, "b": 22})) == "42"
        with pytest.raises(MCPError) as denied:
            await alice.call_tool("delete_repo", {"repo": "x"})
        assert denied.value.data[0]["reason"] == "POLICY_DENIED"


async def test_clients_of_2026_reach_the_virtual_server(passthrough: RunningPassthrough) -> None:
    """The virtual server opens sessions only: an ``auto`` client's ``server/discover`` probe is
    answered METHOD_NOT_FOUND and it falls back to ``initialize``."""
    async with connect(passthrough.url, ALICE, mode="auto") as alice:
        assert alice.protocol_version == "2025-11-25"
        assert text_of(await alice.call_tool("beta__add", {"a": 1, "b": 2})) == "3"


async def test_a_2026_call_on_the_virtual_server_names_the_servers_own_tool(
    passthrough: RunningPassthrough,
) -> None:
    """Mcp-Name is rewritten with the body, so the server's own header check passes."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "alpha__add", "arguments": {"a": 2, "b": 2}, "_meta": meta}}
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(passthrough.url, json=call, headers={
            **HEADERS, "authorization": f"Bearer {ALICE}", "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call", "mcp-name": "alpha__add"})
    result = sse_messages(answer)[-1]
    assert result["result"]["content"][0]["text"] == "4", result  # type: ignore[index]


async def test_prompts_and_resources_through_one_server_and_the_virtual_one(
    passthrough: RunningPassthrough,
) -> None:
    async with connect(f"{passthrough.url}/beta", ALICE) as alice:
        prompt = await alice.get_prompt("greet", {"who": "Ada"})
        assert "Ada" in prompt.messages[0].content.text  # type: ignore[union-attr]
        read = await alice.read_resource("note://hello")
        assert read.contents[0].text == "hello from beta"  # type: ignore[union-attr]
    async with connect(passthrough.url, ALICE) as alice:
        prompts = (await alice.list_prompts()).prompts
        assert "alpha__greet" in {p.name for p in prompts}
        first = await alice.list_resources()  # one server's page per page
        second = await alice.list_resources(cursor=first.next_cursor)
        uris = {str(r.uri) for r in [*first.resources, *second.resources]}
        assert uris == {"mcp-broker://alpha/note%3A%2F%2Fhello",
                        "mcp-broker://beta/note%3A%2F%2Fhello"}
        assert second.next_cursor is None
        read = await alice.read_resource("mcp-broker://alpha/note%3A%2F%2Fhello")
        assert read.contents[0].text == "hello from alpha"  # type: ignore[union-attr]
        prompt = await alice.get_prompt("beta__greet", {"who": "Lin"})
        assert "Lin" in prompt.messages[0].content.text  # type: ignore[union-attr]

"""Invariants of the MCP layer: the virtual server's names route back one way only, list filtering
keeps exactly the allowed items, sealed values open only where they were issued."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.mcp.aggregate import Aggregate
from broker.mcp.errors import McpCursorInvalidError, McpNameNotFoundError
from broker.mcp.listing import filter_result
from broker.mcp.reading import McpOperation
from broker.mcp.servers import check_name
from broker.mcp.sessions import CursorPosition, CursorSeal, Sealer, derive_seal_key

SERVER = st.from_regex(r"[a-z0-9](?:[a-z0-9-]|_(?=[a-z0-9-])){0,10}", fullmatch=True)
NAME = st.text(min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(SERVER, min_size=1, max_size=4, unique=True), st.data())
def test_every_prefixed_name_routes_back_to_its_server_and_name(
    servers: list[str], data: st.DataObject
) -> None:
    for server in servers:
        check_name(server)  # the strategy draws only names registration accepts
    agg = Aggregate(servers)
    seen: dict[str, tuple[str, str]] = {}
    for member in ("name", "uri"):
        for _ in range(5):
            server = data.draw(st.sampled_from(servers))
            name = data.draw(NAME)
            outer = agg.outer(server, member, name)
            assert agg.inner(member, outer) == (server, name)
            key = f"{member}:{outer}"
            assert seen.setdefault(key, (server, name)) == (server, name)  # never two ways


@settings(max_examples=300, deadline=None)
@given(st.lists(SERVER, min_size=1, max_size=3, unique=True), st.text(max_size=40))
def test_a_made_up_name_routes_to_a_registered_server_or_is_refused(
    servers: list[str], outer: str
) -> None:
    agg = Aggregate(servers)
    for member in ("name", "uri"):
        try:
            server, name = agg.inner(member, outer)
        except McpNameNotFoundError:
            continue
        assert server in servers and name


ITEM = st.one_of(
    st.fixed_dictionaries({"name": st.text(max_size=8)}, optional={"title": st.text(max_size=4)}),
    st.dictionaries(st.sampled_from(["title", "uri"]), st.text(max_size=4), max_size=2),
    st.integers(), st.none(), st.text(max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ITEM, max_size=12), st.sets(st.text(max_size=8), max_size=5),
       st.one_of(st.none(), st.text(max_size=6), st.integers()))
def test_a_filtered_list_holds_exactly_the_allowed_named_items(
    items: list[Any], denied: set[str], cursor: Any
) -> None:
    result: dict[str, Any] = {"tools": items}
    if cursor is not None:
        result["nextCursor"] = cursor

    def allowed(op: McpOperation) -> bool:
        return op.name not in denied

    out = filter_result("tools/list", result, allowed, lambda c: f"sealed:{c}")
    expected = [i for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)
                and i["name"] and i["name"] not in denied]
    assert out["tools"] == expected
    sealed = isinstance(cursor, str) and cursor
    assert out.get("nextCursor") == (f"sealed:{cursor}" if sealed else None)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=6), st.text(max_size=6), st.text(max_size=6), st.text(max_size=6),
       st.text(max_size=20))
def test_a_cursor_opens_only_for_its_own_caller_target_and_list(
    caller: str, other: str, target: str, method: str, upstream: str
) -> None:
    seal = CursorSeal(Sealer([derive_seal_key(b"p")]), ttl_s=60)
    cursor = seal.issue(caller, target, method, CursorPosition(target, upstream))
    assert seal.open(caller, target, method, cursor) == CursorPosition(target, upstream)
    for args in ((other, target, method), (caller, other, method), (caller, target, other)):
        if args == (caller, target, method):
            continue
        with pytest.raises(McpCursorInvalidError):
            seal.open(*args, cursor)

"""The virtual MCP server: several registered servers' tools, prompts and resources under one
URL (decision 0049).

A copilot is configured with one MCP URL. Behind it the broker offers every server the
caller's chain may use, each item's name prefixed with its server's name
(``github__create_issue``), resources wrapped in a broker URI
(``mcp-broker://github/<the server's URI, percent-encoded>``). A call is routed back: the prefix
picks the server, the rest is the server's own name, and policy judges the call as made to that
server and tool. ``initialize`` opens a session with every server and answers with the merged
capabilities; the session id the caller gets seals every server's own (``broker.mcp.sessions``).
Lists walk the servers in order, one server's page per page, the cursor saying which server and
where in its list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from broker.errors import MethodNotFoundError
from broker.mcp.errors import McpNameNotFoundError
from broker.mcp.reading import HANDSHAKE_VERSIONS, KNOWN_VERSIONS, LIST_METHODS

SEPARATOR = "__"
RESOURCE_SCHEME = "mcp-broker://"

_NAME_MEMBER = {"tools/list": "name", "prompts/list": "name", "resources/list": "uri",
                "resources/templates/list": "uriTemplate"}
_CALL_MEMBER = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri",
                "resources/subscribe": "uri", "resources/unsubscribe": "uri"}


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a call on the virtual server goes: the server and the params to send it."""

    server: str
    name: str
    params: dict[str, Any]


class Aggregate:
    """Names and routes for one virtual server over ``servers`` (in the order lists walk them).

    A server name never contains the separator (``broker.mcp.servers`` refuses such names), so
    the first separator in a prefixed name ends the server's name.
    """

    def __init__(self, servers: Sequence[str]) -> None:
        if any(SEPARATOR in s or not s or s.endswith("_") for s in servers):
            raise ValueError(
                f"server names must be non-empty, not contain {SEPARATOR!r} nor end with '_'")
        self.servers = tuple(servers)

    # --- names ---------------------------------------------------------------------------------

    def outer(self, server: str, member: str, name: str) -> str:
        if member in ("uri", "uriTemplate"):
            # A template's {placeholders} must survive, so braces stay unencoded.
            return f"{RESOURCE_SCHEME}{server}/{quote(name, safe='{}')}"
        return f"{server}{SEPARATOR}{name}"

    def inner(self, member: str, outer: str) -> tuple[str, str]:
        """(server, the server's own name) for a name the virtual server gave out. Raises
        ``McpNameNotFoundError`` for a name that routes to none of its servers."""
        if member == "uri":
            server, sep, rest = outer.removeprefix(RESOURCE_SCHEME).partition("/")
            ok = outer.startswith(RESOURCE_SCHEME) and bool(sep)
            name = unquote(rest)
        else:
            server, sep, name = outer.partition(SEPARATOR)
            ok = bool(sep)
        if not ok or server not in self.servers or not name:
            raise McpNameNotFoundError(metadata={"name": outer[:128]})
        return server, name

    # --- calls and lists -----------------------------------------------------------------------

    def route(self, method: str, params: Mapping[str, Any]) -> Routed:
        """The server and rewritten params of a named call (tools/call, prompts/get,
        resources/read, resources/(un)subscribe, completion/complete). Raises
        ``MethodNotFoundError`` for any other method (the virtual server has no one server to
        send it to) and ``McpNameNotFoundError`` for a name it did not give out."""
        if method not in _CALL_MEMBER and method != "completion/complete":
            raise MethodNotFoundError(
                f"The virtual MCP server does not route '{method[:64]}'; use one server's URL.")
        if method == "completion/complete":
            ref = dict(params["ref"])
            member = "name" if ref.get("type") == "ref/prompt" else "uri"
            server, name = self.inner(member, ref[member])
            ref[member] = name
            return Routed(server, name, {**params, "ref": ref})
        member = _CALL_MEMBER[method]
        server, name = self.inner(member, params[member])
        return Routed(server, name, {**params, member: name})

    def rename_items(self, list_method: str, server: str, result: dict[str, Any]) -> None:
        """Prefix the names of one server's list answer, in place; items without a string name
        are dropped."""
        member = LIST_METHODS[list_method]
        key = _NAME_MEMBER[list_method]
        items = result.get(member)
        renamed = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get(key), str):
                renamed.append({**item, key: self.outer(server, key, item[key])})
        result[member] = renamed

    def next_position(self, server: str, upstream_cursor: str | None) -> tuple[str, str] | None:
        """After a page of ``server``'s list: the same server's next page, the next server's
        first, or None at the end of the last."""
        if upstream_cursor:
            return server, upstream_cursor
        index = self.servers.index(server) + 1
        return (self.servers[index], "") if index < len(self.servers) else None

    # --- initialize ----------------------------------------------------------------------------

    def merge_initialize(
        self, results: Mapping[str, dict[str, Any]], server_info: dict[str, Any]
    ) -> dict[str, Any]:
        """One ``initialize`` result from every server's: the oldest protocol version any of
        them negotiated (every server speaks it), the union of their capabilities, and their
        instructions under each server's name."""
        versions = [r.get("protocolVersion") for r in results.values()]
        known = [v for v in versions if v in KNOWN_VERSIONS]
        version = min(known, key=KNOWN_VERSIONS.index) if known else HANDSHAKE_VERSIONS[-1]
        capabilities: dict[str, Any] = {}
        for result in results.values():
            _merge_capabilities(capabilities, result.get("capabilities"))
        notes = [f"{name}: {r['instructions']}" for name, r in results.items()
                 if isinstance(r.get("instructions"), str) and r["instructions"]]
        merged: dict[str, Any] = {"protocolVersion": version, "capabilities": capabilities,
                                  "serverInfo": server_info}
        if notes:
            merged["instructions"] = "\n\n".join(notes)
        return merged


# Capabilities the virtual server can route; others (experimental, tasks...) are not offered.
_ROUTABLE = ("tools", "prompts", "resources", "logging", "completions")


def _merge_capabilities(into: dict[str, Any], caps: Any) -> None:
    if not isinstance(caps, dict):
        return
    for name in _ROUTABLE:
        offered = caps.get(name)
        if not isinstance(offered, dict):
            continue
        mine = into.setdefault(name, {})
        for flag, value in offered.items():
            if isinstance(value, bool):
                mine[flag] = mine.get(flag, False) or value

"""``tools/list``, ``prompts/list``, ``resources/list`` and ``resources/templates/list`` answers,
filtered to what the caller may use, with their cursors sealed (decision 0048).

Each listed item is judged as the call that would use it: a tool as ``tools/call`` of its name,
a prompt as ``prompts/get``, a resource as ``resources/read`` of its URI, a resource template as
``resources/read`` of its URI template. An item the predicate refuses, or one without the
string that names it, is left out, so an agent never sees a tool it may not call. The
server's ``nextCursor`` is replaced by a sealed one (``broker.mcp.sessions.CursorSeal``): the
caller can only ask for the next page of the list it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.mcp.reading import LIST_METHODS, McpOperation

Allowed = Callable[[McpOperation], bool]
SealCursor = Callable[[str], str]

# list method -> (the call that uses an item, its kind, the item's member that names it)
_JUDGED_AS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools/call", "tool", "name"),
    "prompts/list": ("prompts/get", "prompt", "name"),
    "resources/list": ("resources/read", "resource", "uri"),
    "resources/templates/list": ("resources/read", "resource", "uriTemplate"),
}


def item_operation(list_method: str, item: Any) -> McpOperation | None:
    """The call an item of a list answer stands for (None: the item names nothing)."""
    method, kind, member = _JUDGED_AS[list_method]
    name = item.get(member) if isinstance(item, dict) else None
    if not isinstance(name, str) or not name:
        return None
    return McpOperation(method, kind, name)  # type: ignore[arg-type]


def filter_result(
    list_method: str, result: dict[str, Any], allowed: Allowed, seal_cursor: SealCursor | None
) -> dict[str, Any]:
    """A copy of a list ``result`` holding only the items ``allowed`` accepts; its
    ``nextCursor`` sealed with ``seal_cursor`` (left out when None)."""
    member = LIST_METHODS[list_method]
    items = result.get(member)
    kept = []
    for item in items if isinstance(items, list) else []:
        operation = item_operation(list_method, item)
        if operation is not None and allowed(operation):
            kept.append(item)
    filtered = {k: v for k, v in result.items() if k != "nextCursor"}
    filtered[member] = kept
    upstream_cursor = result.get("nextCursor")
    if isinstance(upstream_cursor, str) and upstream_cursor and seal_cursor is not None:
        filtered["nextCursor"] = seal_cursor(upstream_cursor)
    return filtered

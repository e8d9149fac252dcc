"""The real ``mcp`` SDK client as the tests use it, with a broker credential.

One place for what every MCP test does with the client: connect with a bearer credential, read
every page of ``tools/list``, take the text of a tool's answer, and find the refusal the SDK
raised inside its task groups.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent


@asynccontextmanager
async def connect(
    url: str, token: str, headers: dict[str, str] | None = None, mode: str = "legacy",
    message_handler: Any = None,
) -> AsyncIterator[Client]:
    """A real SDK client with a broker credential: over the handshake era (``initialize`` and
    sessions) by default, ``mode="auto"`` for what the SDK does by default (2026-07-28)."""
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with (
        create_mcp_http_client(headers=sent) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, cache=None,
               message_handler=message_handler) as client,
    ):
        yield client


async def tool_names(client: Client) -> list[str]:
    """Every page of the list (servers page; the virtual server pages server by server)."""
    names: list[str] = []
    cursor: str | None = None
    for _ in range(40):
        page = await client.list_tools(cursor=cursor)
        names += [t.name for t in page.tools]
        cursor = page.next_cursor
        if cursor is None:
            return names
    raise AssertionError("the list never ended")


def text_of(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert isinstance(content[0], TextContent)
    return content[0].text


def first_mcp_error(group: BaseExceptionGroup[BaseException]) -> MCPError:
    """The SDK raises a refusal inside its task groups: the first ``MCPError`` among them."""
    for error in group.exceptions:
        if isinstance(error, MCPError):
            return error
        if isinstance(error, BaseExceptionGroup):
            return first_mcp_error(error)
    raise AssertionError(f"no MCPError in {group!r}")

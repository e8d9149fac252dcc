"""MCP servers registered at run time: the same store contract on every backend (memory, and
Redis standalone, Cluster and Sentinel)."""

from __future__ import annotations

import asyncio

import msgspec

from broker.stores.base import Stores
from broker.stores.mcp_servers import McpServerRecord


def record(
    name: str, url: str = "https://mcp.example.com/mcp", epoch: str = "e1"
) -> McpServerRecord:
    return McpServerRecord(
        name=name, url=url, epoch=epoch, description="tools", credential_kind="bearer",
        credential_sealed="sealed-secret", credential_fingerprint="sha256:0123abcd",
        created_at=1.5, updated_at=1.5)


async def test_create_get_list_delete(stores: Stores) -> None:
    servers = stores.mcp_servers
    assert await servers.get("docs") is None
    assert await servers.create(record("docs")) is True
    assert await servers.create(record("alpha")) is True
    assert await servers.get("docs") == record("docs")
    assert [r.name for r in await servers.list()] == ["alpha", "docs"]
    assert await servers.delete("docs") is True
    assert await servers.delete("docs") is False
    assert await servers.get("docs") is None
    assert [r.name for r in await servers.list()] == ["alpha"]


async def test_create_keeps_the_first_registration(stores: Stores) -> None:
    servers = stores.mcp_servers
    assert await servers.create(record("docs", "https://a.example.com/mcp"))
    assert await servers.create(record("docs", "https://b.example.com/mcp")) is False
    found = await servers.get("docs")
    assert found is not None and found.url == "https://a.example.com/mcp"


async def test_update_replaces_only_a_registered_server(stores: Stores) -> None:
    servers = stores.mcp_servers
    assert await servers.update(record("docs")) is False
    assert await servers.get("docs") is None  # an update never creates
    await servers.create(record("docs"))
    moved = msgspec.structs.replace(record("docs", "https://b.example.com/mcp", "e2"),
                                    updated_at=2.25)
    assert await servers.update(moved) is True
    assert await servers.get("docs") == moved
    await servers.delete("docs")
    assert await servers.update(moved) is False  # removed meanwhile: stays removed
    assert await servers.get("docs") is None


async def test_racing_registrations_make_exactly_one_winner(stores: Stores) -> None:
    servers = stores.mcp_servers
    urls = [f"https://s{i}.example.com/mcp" for i in range(12)]
    created = await asyncio.gather(*(servers.create(record("docs", url)) for url in urls))
    assert created.count(True) == 1
    found = await servers.get("docs")
    assert found is not None and found.url == urls[created.index(True)]


async def test_records_round_trip_exactly(stores: Stores) -> None:
    servers = stores.mcp_servers
    exact = McpServerRecord(
        name="n-1_x", url="http://127.0.0.1:9/mcp", epoch="abc", description="ünïcode \"q\"",
        aggregate=False, timeout_s=0.1 + 0.2, idle_timeout_s=7.0, credential_kind="header",
        credential_header="x-api-key", credential_env="TOKEN_ENV",
        created_at=1733450000.123456789, updated_at=1733450000.987654321)
    await servers.create(exact)
    assert await servers.get("n-1_x") == exact
    assert await servers.list() == [exact]

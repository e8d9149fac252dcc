"""Two replicas on one Redis: a write through one reaches the other's read cache, and the global
kill switch and the run-time MCP servers move on both, over the control channel (real Redis in
each topology: standalone, cluster, Sentinel; two ``Controls`` in-process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
from redis.asyncio import Redis

from broker.errors import KillSwitchEngagedError
from broker.mcp.directory import McpServerDirectory, McpServerRegistration
from broker.mcp.held_credentials import HeldCredentials
from broker.mcp.servers import McpServerRegistry
from broker.outbound.egress import EgressPolicy
from broker.runtime.control import Controls
from broker.settings import EgressSettings, Settings, StoreSettings
from broker.settings_mcp import McpCredential
from broker.stores.base import AgentRecord, StoreBackend
from broker.stores.factory import open_backend
from broker.stores.replica_channel import ReplicaChannel
from testkit.procs import free_port
from testkit.redis_process import REDIS_MODES, RedisMode

DEADLINE_S = 5.0  # far below read_cache_ttl_s: only the channel can explain a change seen here


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


@pytest.fixture(params=list(REDIS_MODES))
async def replicas(
    request: pytest.FixtureRequest, redis_store_settings: Callable[[RedisMode], StoreSettings]
) -> AsyncIterator[list[Controls]]:
    store = msgspec.structs.replace(
        redis_store_settings(REDIS_MODES[request.param]), read_cache_ttl_s=600
    )
    settings = Settings(store=store)
    backends: list[StoreBackend] = [open_backend(store), open_backend(store)]
    started = [await Controls.start(settings, b.stores()) for b in backends]
    try:
        yield started
    finally:
        for controls, backend in zip(started, backends, strict=True):
            await controls.stop()
            await backend.close()


async def test_a_suspension_through_one_replica_is_read_at_once_by_the_other(
    replicas: list[Controls],
) -> None:
    here, there = (c.stores.registry for c in replicas)
    await here.put(AgentRecord(name="a", card_json="{}"))
    assert (await there.get("a")).status == "active"  # type: ignore[union-attr]  # now cached

    async def there_sees(status: str) -> bool:
        return (await there.get("a")).status == status  # type: ignore[union-attr]

    await here.set_status("a", "suspended", time.time())
    await eventually(lambda: there_sees("suspended"))
    await here.set_status("a", "active", time.time())
    await eventually(lambda: there_sees("active"))


async def test_a_rotated_credential_stops_on_the_other_replica(replicas: list[Controls]) -> None:
    here, there = (c.stores.credentials for c in replicas)
    await here.replace("a", "old-digest")
    assert await there.lookup("old-digest") == "a"  # cached there
    await here.replace("a", "new-digest")

    async def old_refused() -> bool:
        return await there.lookup("old-digest") is None

    await eventually(old_refused)


async def test_the_global_kill_switch_moves_on_every_replica(replicas: list[Controls]) -> None:
    here, there = (c.kill for c in replicas)
    there.check()  # not engaged: nothing raised
    state, newly = await here.engage("admin", "incident 42")
    assert newly and state.reason == "incident 42"

    async def there_engaged() -> bool:
        return there.state is not None

    await eventually(there_engaged)
    with pytest.raises(KillSwitchEngagedError):
        there.check()
    assert await there.lift() is True

    async def here_lifted() -> bool:
        return here.state is None

    await eventually(here_lifted)
    here.check()


async def test_a_channel_whose_redis_is_down_at_start_subscribes_once_it_is_up(
    redis_server_factory: Callable[[int], object],
) -> None:
    port = free_port()
    received: list[bytes] = []
    gaps: list[bool] = []
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    channel = ReplicaChannel(client, "ctl", received.append, retry_s=0.1,
                             on_gap=lambda: gaps.append(True))  # fmt: skip
    await channel.start_when_possible()  # Redis is not there yet: no error, a retry instead
    redis_server_factory(port)

    async def delivered() -> bool:
        await channel.publish(b"hello")
        return b"hello" in received

    try:
        await eventually(delivered)
        assert gaps == [True]  # told to catch up on what it may have missed
    finally:
        await channel.stop()
        await client.aclose()


def mcp_directory(controls: Controls) -> McpServerDirectory:
    """A run-time MCP server directory wired to ``controls`` as the runtime wires it."""
    egress = EgressPolicy(EgressSettings(allow_loopback=True))
    directory = McpServerDirectory(
        McpServerRegistry(egress.check_url), controls.stores.mcp_servers, egress,
        HeldCredentials(b"one seal secret on every replica"), configured={}, environ={},
        notify=lambda name: controls.publish_change("mcp", name))
    controls.mcp_changed = directory.sync
    return directory


async def test_an_mcp_server_registered_changed_and_removed_on_one_replica_moves_on_the_other(
    replicas: list[Controls],
) -> None:
    here, there = (mcp_directory(c) for c in replicas)

    def auth_there() -> dict[str, str] | None:
        server = there.registry.find("docs")
        return None if server is None else dict(server.auth_headers)

    async def there_holds(expected: dict[str, str] | None) -> bool:
        return auth_there() == expected

    await here.register(McpServerRegistration(
        name="docs", url="http://127.0.0.1:9/mcp",
        credential=McpCredential(kind="bearer", value="first")))
    await eventually(lambda: there_holds({"authorization": "Bearer first"}))
    await here.rotate("docs", McpCredential(kind="header", header="X-Key", value="second"))
    await eventually(lambda: there_holds({"x-key": "second"}))
    await here.remove("docs")
    await eventually(lambda: there_holds(None))

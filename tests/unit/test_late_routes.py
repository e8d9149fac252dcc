"""Task routes claimed while Redis is down: accepted, landed later, never handed over.

A real redis-server of the test's own is stopped and started again; the background retry is
given a long interval so each test decides when a pending claim lands (through ``get``, which
lands the claims of the task it reads first).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable

import pytest

from broker.errors import StoreUnavailableError
from broker.late_writes import LateWrites
from broker.settings import StoreSettings
from broker.stores.base import TaskRoute
from broker.stores.late_routes import LateTaskRoutes
from broker.stores.redis import RedisBackend

TTL_S = 60
ServerFactory = Callable[[int], subprocess.Popen[bytes]]


class Outage:
    def __init__(self, port: int, start: ServerFactory) -> None:
        self.port = port
        self._start = start
        self.server = start(port)

    def begin(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=5)

    def end(self) -> None:
        self.server = self._start(self.port)  # empty: no persistence


class Rig:
    def __init__(self, backend: RedisBackend, outage: Outage) -> None:
        self.inner = backend.stores().task_routes
        self.late = LateWrites((StoreUnavailableError,), interval_s=3600)
        self.conflicts: list[TaskRoute] = []
        self.routes = LateTaskRoutes(self.inner, self.late, self._report)
        self.outage = outage

    async def _report(self, route: TaskRoute) -> None:
        self.conflicts.append(route)


@pytest.fixture
async def rig(unused_tcp_port: int, redis_server_factory: ServerFactory) -> AsyncIterator[Rig]:
    outage = Outage(unused_tcp_port, redis_server_factory)
    backend = RedisBackend(
        StoreSettings(backend="redis", redis_url=f"redis://127.0.0.1:{unused_tcp_port}/0")
    )
    rig = Rig(backend, outage)
    try:
        yield rig
    finally:
        await rig.late.close(timeout_s=0.1)
        await backend.close()


def route(owner: str, task_id: str = "t-1") -> TaskRoute:
    return TaskRoute(agent="echo", task_id=task_id, owner=owner)


async def test_a_claim_made_while_redis_is_down_is_accepted_and_lands_when_it_is_back(
    rig: Rig,
) -> None:
    rig.outage.begin()
    assert await rig.routes.claim(route("alice"), TTL_S, tree="tree-1") is True
    assert rig.routes.pending == 1 and rig.late.pending == 1
    with pytest.raises(StoreUnavailableError):  # a read while down is still refused
        await rig.routes.get("echo", "t-1")
    rig.outage.end()
    # The owner's next read through this replica lands the claim first.
    assert await rig.routes.get("echo", "t-1") == route("alice")
    assert await rig.inner.get("echo", "t-1") == route("alice")  # in Redis, for every replica
    assert rig.routes.pending == 0 and rig.conflicts == []


async def test_the_background_retry_lands_it_without_any_read(rig: Rig) -> None:
    rig.late = LateWrites((StoreUnavailableError,), interval_s=0.01)
    rig.routes = LateTaskRoutes(rig.inner, rig.late, rig._report)
    rig.outage.begin()
    await rig.routes.claim(route("alice"), TTL_S)
    rig.outage.end()
    await rig.late.close(timeout_s=5)  # lands what is pending
    assert await rig.inner.get("echo", "t-1") == route("alice")


async def test_a_collision_found_late_never_hands_the_task_over(rig: Rig) -> None:
    rig.outage.begin()
    assert await rig.routes.claim(route("mallory"), TTL_S) is True
    rig.outage.end()
    # Meanwhile another caller's task of that id was recorded (on another replica, say).
    assert await rig.inner.claim(route("alice"), TTL_S) is True
    assert await rig.routes.get("echo", "t-1") == route("alice")  # mallory never gets it
    assert rig.conflicts == [route("mallory")]
    assert await rig.inner.get("echo", "t-1") == route("alice")


async def test_pending_claims_of_one_task_land_in_the_order_they_were_made(rig: Rig) -> None:
    rig.outage.begin()
    await rig.routes.claim(route("alice"), TTL_S)
    await rig.routes.claim(route("mallory"), TTL_S)  # an agent reusing the id for another caller
    rig.outage.end()
    assert await rig.routes.get("echo", "t-1") == route("alice")  # the first claimant wins
    assert rig.conflicts == [route("mallory")]
    assert rig.routes.pending == 0


async def test_claims_that_reach_redis_behave_as_before(rig: Rig) -> None:
    assert await rig.routes.claim(route("alice"), TTL_S) is True
    assert await rig.routes.claim(route("alice"), TTL_S) is True  # same owner again
    assert await rig.routes.claim(route("bob"), TTL_S) is False  # refused at once
    assert rig.routes.pending == 0 and rig.conflicts == []

"""The store contract: every backend must pass every test here.

The ``backend`` fixture (in ``conftest.py``) is parametrised over all backends; the Redis one runs
against a real server (``redis_url``) under a key prefix of its own. Tests at the end cover what
only a networked backend can do: fail with StoreUnavailableError while Redis is down, and recover
without a restart.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from broker.errors import StoreFullError, StoreUnavailableError
from broker.settings import StoreSettings
from broker.stores.base import AgentRecord, StoreBackend, Stores, TaskRoute
from broker.stores.factory import open_backend
from broker.stores.memory import MemoryBackend, MemoryTaskRouteStore

# Timestamps with more significant digits than Lua's cjson prints, to catch any rounding.
CREATED_AT = 1715000000.123456
NOW = 1778312345.6789012


def agent(name: str, **changes: object) -> AgentRecord:
    card = {"name": name, "description": 'quotes " \\ / slashes, ünïcödé 😀\n', "skills": []}
    record = AgentRecord(
        name=name,
        card_json=msgspec.json.encode(card).decode(),
        jsonrpc_url=f"http://127.0.0.1:9/{name}/rpc",
        created_at=CREATED_AT,
        updated_at=CREATED_AT,
    )
    return msgspec.structs.replace(record, **changes)


# --- AgentRegistry -------------------------------------------------------------------------------


async def test_ping_succeeds(backend: StoreBackend) -> None:
    await backend.ping()


async def test_create_stores_a_new_agent_and_refuses_a_duplicate(stores: Stores) -> None:
    first = agent("alpha")
    assert await stores.registry.create(first) is True
    assert await stores.registry.create(agent("alpha", card_json="{}")) is False
    assert await stores.registry.get("alpha") == first


async def test_put_replaces_and_creates(stores: Stores) -> None:
    await stores.registry.put(agent("alpha"))
    replacement = agent("alpha", rest_url="http://127.0.0.1:9/rest", source="declarative")
    await stores.registry.put(replacement)
    assert await stores.registry.get("alpha") == replacement


async def test_get_unknown_agent_is_none(stores: Stores) -> None:
    assert await stores.registry.get("nobody") is None


async def test_list_is_sorted_by_name(stores: Stores) -> None:
    assert await stores.registry.list() == []
    for name in ["charlie", "Bravo", "alpha", "éclair", "alpha-2"]:
        await stores.registry.create(agent(name))
    names = [record.name for record in await stores.registry.list()]
    assert names == sorted(["charlie", "Bravo", "alpha", "éclair", "alpha-2"])


async def test_delete_removes_the_agent_once(stores: Stores) -> None:
    await stores.registry.create(agent("alpha"))
    await stores.registry.create(agent("bravo"))
    assert await stores.registry.delete("alpha") is True
    assert await stores.registry.delete("alpha") is False
    assert await stores.registry.get("alpha") is None
    assert [record.name for record in await stores.registry.list()] == ["bravo"]


async def test_set_status_changes_status_and_updated_at_only(stores: Stores) -> None:
    original = agent("alpha")
    await stores.registry.create(original)
    expected = msgspec.structs.replace(original, status="suspended", updated_at=NOW)
    assert await stores.registry.set_status("alpha", "suspended", NOW) == expected
    assert await stores.registry.get("alpha") == expected
    reactivated = await stores.registry.set_status("alpha", "active", 5.0)
    assert reactivated == msgspec.structs.replace(original, updated_at=5.0)


async def test_set_status_of_unknown_agent_is_none_and_creates_nothing(stores: Stores) -> None:
    assert await stores.registry.set_status("nobody", "suspended", NOW) is None
    assert await stores.registry.get("nobody") is None


async def test_concurrent_creates_of_one_name_admit_exactly_one(stores: Stores) -> None:
    attempts = [agent("alpha", jsonrpc_url=f"http://127.0.0.1:9/{i}") for i in range(50)]
    results = await asyncio.gather(*(stores.registry.create(record) for record in attempts))
    assert results.count(True) == 1
    assert await stores.registry.get("alpha") == attempts[results.index(True)]


async def test_concurrent_set_status_never_tears_a_record(stores: Stores) -> None:
    original = agent("alpha")
    await stores.registry.create(original)
    # Odd timestamps go with "suspended", even ones with "active": any mix-up shows.
    await asyncio.gather(
        *(
            stores.registry.set_status("alpha", "suspended" if i % 2 else "active", float(i))
            for i in range(50)
        )
    )
    final = await stores.registry.get("alpha")
    assert final is not None
    assert final.status == ("suspended" if int(final.updated_at) % 2 else "active")
    assert msgspec.structs.replace(final, status="active", updated_at=CREATED_AT) == original


# --- CredentialStore -----------------------------------------------------------------------------


async def test_replace_makes_the_digest_authenticate_the_agent(stores: Stores) -> None:
    await stores.credentials.replace("alpha", "d1")
    assert await stores.credentials.lookup("d1") == "alpha"


async def test_replace_revokes_the_earlier_digest(stores: Stores) -> None:
    await stores.credentials.replace("alpha", "d1")
    await stores.credentials.replace("alpha", "d2")
    assert await stores.credentials.lookup("d1") is None
    assert await stores.credentials.lookup("d2") == "alpha"
    assert await stores.credentials.revoke_agent("alpha") == 1


async def test_replace_with_the_same_digest_keeps_it(stores: Stores) -> None:
    await stores.credentials.replace("alpha", "d1")
    await stores.credentials.replace("alpha", "d1")
    assert await stores.credentials.lookup("d1") == "alpha"


async def test_lookup_unknown_digest_is_none(stores: Stores) -> None:
    assert await stores.credentials.lookup("unknown") is None


async def test_revoke_agent_counts_and_removes_its_credentials(stores: Stores) -> None:
    await stores.credentials.replace("alpha", "d1")
    await stores.credentials.replace("bravo", "d2")
    assert await stores.credentials.revoke_agent("alpha") == 1
    assert await stores.credentials.lookup("d1") is None
    assert await stores.credentials.lookup("d2") == "bravo"
    assert await stores.credentials.revoke_agent("alpha") == 0
    assert await stores.credentials.revoke_agent("nobody") == 0


async def test_a_digest_handed_to_another_agent_is_no_longer_the_first_ones(
    stores: Stores,
) -> None:
    await stores.credentials.replace("alpha", "shared")
    await stores.credentials.replace("bravo", "shared")
    assert await stores.credentials.lookup("shared") == "bravo"
    assert await stores.credentials.revoke_agent("alpha") == 0
    assert await stores.credentials.lookup("shared") == "bravo"
    assert await stores.credentials.revoke_agent("bravo") == 1


# --- TaskRouteStore ------------------------------------------------------------------------------


async def test_claim_records_a_new_route(stores: Stores) -> None:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    assert await stores.task_routes.claim(route, ttl_s=60) is True
    assert await stores.task_routes.get("alpha", "t1") == route


async def test_claim_by_the_same_owner_again_holds(stores: Stores) -> None:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    assert await stores.task_routes.claim(route, ttl_s=60) is True
    assert await stores.task_routes.claim(route, ttl_s=60) is True
    assert await stores.task_routes.get("alpha", "t1") == route


async def test_claim_by_another_owner_is_refused_and_changes_nothing(stores: Stores) -> None:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    await stores.task_routes.claim(route, ttl_s=60)
    intruder = TaskRoute(agent="alpha", task_id="t1", owner="caller-2")
    assert await stores.task_routes.claim(intruder, ttl_s=60) is False
    assert await stores.task_routes.get("alpha", "t1") == route


async def test_a_claim_with_a_tree_records_the_task_in_that_tree(stores: Stores) -> None:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    assert await stores.task_routes.claim(route, ttl_s=60, tree="tree-1") is True
    assert await stores.task_routes.get("alpha", "t1") == route
    assert await stores.task_trees.members("tree-1") == [("alpha", "t1")]
    assert await stores.task_routes.claim(route, ttl_s=60, tree="tree-1") is True  # again: holds
    assert await stores.task_trees.members("tree-1") == [("alpha", "t1")]


async def test_a_refused_claim_leaves_the_tree_without_the_task(stores: Stores) -> None:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    await stores.task_routes.claim(route, ttl_s=60, tree="tree-1")
    intruder = TaskRoute(agent="alpha", task_id="t1", owner="caller-2")
    assert await stores.task_routes.claim(intruder, ttl_s=60, tree="tree-2") is False
    assert await stores.task_trees.members("tree-2") == []
    assert await stores.task_trees.members("tree-1") == [("alpha", "t1")]
    assert await stores.task_routes.get("alpha", "t1") == route


async def test_routes_are_per_agent_and_task(stores: Stores) -> None:
    # Also checks that no key encoding lets ("a:b", "c") collide with ("a", "b:c").
    routes = [
        TaskRoute(agent="a:b", task_id="c", owner="caller-1"),
        TaskRoute(agent="a", task_id="b:c", owner="caller-2"),
        TaskRoute(agent="a", task_id="c", owner="caller-3"),
    ]
    for route in routes:
        assert await stores.task_routes.claim(route, ttl_s=60) is True
    for route in routes:
        assert await stores.task_routes.get(route.agent, route.task_id) == route


async def test_get_unknown_route_is_none(stores: Stores) -> None:
    assert await stores.task_routes.get("alpha", "unknown") is None


async def test_claim_needs_a_positive_ttl(stores: Stores) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await stores.task_routes.claim(TaskRoute(agent="a", task_id="t", owner="o"), ttl_s=0)


async def test_route_expires_after_its_ttl_and_a_refresh_extends_it(stores: Stores) -> None:
    # Delays on a busy machine only push each step later, so the waits keep their margin on
    # the side a delay eats: the read within the refreshed TTL is 0.7 s before it ends.
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    assert await stores.task_routes.claim(route, ttl_s=2) is True
    await asyncio.sleep(1.0)
    assert await stores.task_routes.claim(route, ttl_s=2) is True
    await asyncio.sleep(1.3)  # past the first claim's TTL, within the refreshed one
    assert await stores.task_routes.get("alpha", "t1") == route
    await asyncio.sleep(1.0)
    assert await stores.task_routes.get("alpha", "t1") is None
    newcomer = TaskRoute(agent="alpha", task_id="t1", owner="caller-2")
    assert await stores.task_routes.claim(newcomer, ttl_s=1) is True


async def test_concurrent_claims_by_different_owners_admit_exactly_one(stores: Stores) -> None:
    claims = [TaskRoute(agent="alpha", task_id="t1", owner=f"caller-{i}") for i in range(50)]
    results = await asyncio.gather(*(stores.task_routes.claim(c, ttl_s=60) for c in claims))
    assert results.count(True) == 1
    assert await stores.task_routes.get("alpha", "t1") == claims[results.index(True)]


# --- Redis only: key layout, outage, recovery ---------------------------------------------------


async def test_a_finished_claim_holds_like_any_other(stores: Stores) -> None:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    assert await stores.task_routes.claim(route, ttl_s=60, finished=True) is True
    assert await stores.task_routes.get("alpha", "t1") == route
    other = TaskRoute(agent="alpha", task_id="t1", owner="caller-2")
    assert await stores.task_routes.claim(other, ttl_s=60, finished=True) is False
    assert await stores.task_routes.get("alpha", "t1") == route


# --- the memory store's capacity -----------------------------------------------------------


def _route(n: int) -> TaskRoute:
    return TaskRoute(agent="alpha", task_id=f"t{n}", owner="caller")


async def test_a_full_memory_store_forgets_finished_tasks_first_oldest_first() -> None:
    stores = MemoryBackend(max_tasks=3).stores()
    await stores.task_routes.claim(_route(1), ttl_s=600, finished=True)
    await stores.task_routes.claim(_route(2), ttl_s=600)  # running
    await stores.task_routes.claim(_route(3), ttl_s=600, finished=True)
    await stores.task_routes.claim(_route(4), ttl_s=600)  # makes room: t1 goes
    assert [await stores.task_routes.get("alpha", f"t{n}") is not None for n in (1, 2, 3, 4)] == [
        False, True, True, True,
    ]  # fmt: skip
    await stores.task_routes.claim(_route(5), ttl_s=600, finished=True)  # t3 goes
    assert await stores.task_routes.get("alpha", "t3") is None
    assert await stores.task_routes.get("alpha", "t2") is not None


async def test_a_memory_store_full_of_running_tasks_refuses_a_new_one() -> None:
    stores = MemoryBackend(max_tasks=2).stores()
    await stores.task_routes.claim(_route(1), ttl_s=600)
    await stores.task_routes.claim(_route(2), ttl_s=600)
    with pytest.raises(StoreFullError):
        await stores.task_routes.claim(_route(3), ttl_s=600, finished=True)
    assert await stores.task_routes.claim(_route(1), ttl_s=600) is True  # a refresh needs no room
    assert await stores.task_routes.get("alpha", "t3") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=60))
async def test_the_memory_store_never_exceeds_its_capacity_nor_forgets_a_running_task(
    claims: list[tuple[int, bool]],
) -> None:
    capacity = 5
    routes = MemoryTaskRouteStore(MemoryBackend().stores().task_trees, max_tasks=capacity)
    running: set[int] = set()
    for n, finished in claims:
        try:
            await routes.claim(_route(n), ttl_s=600, finished=finished)
        except StoreFullError:
            assert len(running) >= capacity  # refused only when running tasks fill it
            continue
        if finished:
            running.discard(n)
        else:
            running.add(n)
        assert len(routes) <= capacity
        for kept in running:
            assert await routes.get("alpha", f"t{kept}") is not None


def redis_backend(url: str, prefix: str = "outage") -> StoreBackend:
    return open_backend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))


def every_operation(stores: Stores) -> list[Callable[[], Awaitable[object]]]:
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    return [
        lambda: stores.registry.create(agent("alpha")),
        lambda: stores.registry.put(agent("alpha")),
        lambda: stores.registry.get("alpha"),
        stores.registry.list,
        lambda: stores.registry.delete("alpha"),
        lambda: stores.registry.set_status("alpha", "suspended", NOW),
        lambda: stores.credentials.replace("alpha", "d1"),
        lambda: stores.credentials.lookup("d1"),
        lambda: stores.credentials.revoke_agent("alpha"),
        lambda: stores.task_routes.claim(route, ttl_s=60),
        lambda: stores.task_routes.claim(route, ttl_s=60, tree="tree-1"),
        lambda: stores.task_routes.get("alpha", "t1"),
    ]


async def assert_unavailable(operation: Callable[[], Awaitable[object]]) -> None:
    with pytest.raises(StoreUnavailableError) as raised:
        await operation()
    assert str(raised.value) == StoreUnavailableError.default_message  # no Redis text leaks
    assert isinstance(raised.value.__cause__, redis.RedisError)
    assert raised.value.detail


async def test_redis_keys_carry_the_prefix_and_script_keys_share_a_slot(
    redis_url: str, redis_key_prefix: str
) -> None:
    backend = redis_backend(redis_url, redis_key_prefix)
    stores = backend.stores()
    try:
        await stores.registry.create(agent("alpha"))
        await stores.credentials.replace("alpha", "d1")
        await stores.task_routes.claim(TaskRoute(agent="a", task_id="t", owner="o"), ttl_s=60)
    finally:
        await backend.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(key.decode() for key in client.scan_iter(match=f"{redis_key_prefix}:*"))
    finally:
        client.close()
    assert len(keys) == 4
    credential_keys = [key for key in keys if "{cred}" in key]
    assert len({key_slot(key.encode()) for key in credential_keys}) == 1


async def test_a_claim_with_a_tree_works_after_redis_lost_its_scripts(
    private_redis_url: str, redis_key_prefix: str
) -> None:
    """The claim and the tree entry go out as one pipeline of EVALSHAs; after a Redis restart
    (scripts gone) it falls back to loading them, and still records both. (SCRIPT FLUSH is
    server-wide: on a server of this module's own.)"""
    backend = redis_backend(private_redis_url, redis_key_prefix)
    stores = backend.stores()
    client = redis.Redis.from_url(private_redis_url)
    try:
        first = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
        assert await stores.task_routes.claim(first, ttl_s=60, tree="tree-1") is True
        client.script_flush()
        second = TaskRoute(agent="alpha", task_id="t2", owner="caller-1")
        assert await stores.task_routes.claim(second, ttl_s=60, tree="tree-1") is True
        assert await stores.task_routes.get("alpha", "t2") == second
        assert await stores.task_trees.members("tree-1") == [("alpha", "t1"), ("alpha", "t2")]
    finally:
        client.close()
        await backend.close()


async def test_unreachable_redis_raises_store_unavailable(unused_tcp_port: int) -> None:
    backend = redis_backend(f"redis://127.0.0.1:{unused_tcp_port}/0")
    try:
        await assert_unavailable(backend.ping)
        for operation in every_operation(backend.stores()):
            await assert_unavailable(operation)
    finally:
        await backend.close()


async def test_redis_backend_recovers_when_the_server_returns(
    unused_tcp_port: int, redis_server_factory: Callable[[int], subprocess.Popen[bytes]]
) -> None:
    server = redis_server_factory(unused_tcp_port)
    backend = redis_backend(f"redis://127.0.0.1:{unused_tcp_port}/0")
    stores = backend.stores()
    try:
        assert await stores.registry.create(agent("alpha")) is True
        server.terminate()
        server.wait(timeout=5)
        await assert_unavailable(backend.ping)
        await assert_unavailable(lambda: stores.registry.get("alpha"))
        redis_server_factory(unused_tcp_port)
        await backend.ping()
        # The new server kept nothing (no persistence), and the scripts are loaded again.
        assert await stores.registry.set_status("alpha", "suspended", NOW) is None
        assert await stores.registry.create(agent("alpha")) is True
    finally:
        await backend.close()


async def test_a_route_written_as_json_by_an_earlier_version_is_read_and_kept(
    redis_url: str, redis_key_prefix: str
) -> None:
    backend = redis_backend(redis_url, redis_key_prefix)
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller-1")
    client = redis.Redis.from_url(redis_url)
    try:
        key = f"{redis_key_prefix}:route:{{5:alpha:t1}}"
        client.set(key, msgspec.json.encode(route), ex=60)
        assert await backend.stores().task_routes.get("alpha", "t1") == route
        thief = TaskRoute(agent="alpha", task_id="t1", owner="caller-2")
        assert await backend.stores().task_routes.claim(thief, ttl_s=60) is False
        assert await backend.stores().task_routes.claim(route, ttl_s=60) is True
        assert client.get(key) == b"caller-1"  # rewritten compactly
    finally:
        client.close()
        await backend.close()

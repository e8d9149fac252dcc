"""The delegation store contract: fan-out counters, revocations, task trees, on every backend.

Uses the ``stores`` fixture of ``conftest.py`` (memory and a real Redis). Limits must hold exactly,
also under concurrency and, on Redis, across processes. Redis-only tests at the end check the key
layout (one cluster slot per script) and the outage behaviour.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from redis.crc import key_slot

from broker.errors import StoreUnavailableError
from broker.settings import StoreSettings
from broker.stores.base import (
    ChildSlot,
    DelegationCounters,
    DelegationUsage,
    Refusal,
    StoreBackend,
    Stores,
)
from broker.stores.factory import open_backend

# Both TTLs long enough that nothing expires within a test unless the test says so.
LONG_S = 600


async def acquire(
    counters: DelegationCounters,
    parent: str = "p1",
    tree: str = "t1",
    *,
    max_concurrent: int = 0,
    max_total: int = 0,
    max_tree: int = 0,
    slot_ttl_s: int = LONG_S,
    ttl_s: int = LONG_S,
) -> ChildSlot | Refusal:
    return await counters.acquire_child(
        parent,
        tree,
        max_concurrent=max_concurrent,
        max_total=max_total,
        max_tree=max_tree,
        slot_ttl_s=slot_ttl_s,
        ttl_s=ttl_s,
    )


def taken(result: ChildSlot | Refusal) -> ChildSlot:
    assert isinstance(result, ChildSlot), result
    return result


# --- DelegationCounters --------------------------------------------------------------------------


async def test_max_total_admits_exactly_that_many(stores: Stores) -> None:
    counters = stores.delegation_counters
    slots = [taken(await acquire(counters, max_total=5)) for _ in range(5)]
    assert len({slot.id for slot in slots}) == 5
    assert {(slot.parent, slot.tree) for slot in slots} == {("p1", "t1")}
    assert await acquire(counters, max_total=5) == Refusal(limit="total")
    # Releasing frees in-flight capacity, never total capacity.
    assert await counters.release_child(slots[0]) is True
    assert await acquire(counters, max_total=5) == Refusal(limit="total")
    assert await counters.usage("p1", "t1") == DelegationUsage(4, 5, 5)


async def test_concurrent_limit_frees_a_place_on_release(stores: Stores) -> None:
    counters = stores.delegation_counters
    first = taken(await acquire(counters, max_concurrent=2))
    taken(await acquire(counters, max_concurrent=2))
    assert await acquire(counters, max_concurrent=2) == Refusal(limit="concurrent")
    assert await counters.release_child(first) is True
    taken(await acquire(counters, max_concurrent=2))
    assert await counters.usage("p1", "t1") == DelegationUsage(2, 3, 3)


async def test_tree_limit_counts_hops_of_every_parent(stores: Stores) -> None:
    counters = stores.delegation_counters
    for parent in ["p1", "p2", "p3", "p1"]:
        taken(await acquire(counters, parent, max_tree=4))
    for parent in ["p1", "p4"]:
        assert await acquire(counters, parent, max_tree=4) == Refusal(limit="tree")
    taken(await acquire(counters, "p1", "t2", max_tree=4))  # another tree is unaffected
    assert await counters.usage("p1", "t1") == DelegationUsage(2, 2, 4)
    assert await counters.usage("p4", "t1") == DelegationUsage(0, 0, 4)


async def test_zero_means_unlimited(stores: Stores) -> None:
    for _ in range(60):
        taken(await acquire(stores.delegation_counters))
    assert await stores.delegation_counters.usage("p1", "t1") == DelegationUsage(60, 60, 60)


async def test_limits_that_waiting_cannot_lift_are_named_first(stores: Stores) -> None:
    counters = stores.delegation_counters
    taken(await acquire(counters, "p1"))
    every_limit_reached = {"max_concurrent": 1, "max_total": 1, "max_tree": 1}
    assert await acquire(counters, "p1", **every_limit_reached) == Refusal(limit="total")
    assert await acquire(counters, "p2", max_concurrent=1, max_tree=1) == Refusal(limit="tree")
    assert await acquire(counters, "p1", max_concurrent=1) == Refusal(limit="concurrent")
    # Refusals changed nothing.
    assert await counters.usage("p1", "t1") == DelegationUsage(1, 1, 1)
    assert await counters.usage("p2", "t1") == DelegationUsage(0, 0, 1)


async def test_expired_slots_no_longer_count(stores: Stores) -> None:
    counters = stores.delegation_counters
    abandoned = taken(await acquire(counters, max_concurrent=1, slot_ttl_s=1))
    assert await acquire(counters, max_concurrent=1, slot_ttl_s=1) == Refusal(limit="concurrent")
    await asyncio.sleep(1.1)
    assert await counters.usage("p1", "t1") == DelegationUsage(0, 1, 1)
    taken(await acquire(counters, max_concurrent=1, slot_ttl_s=1))
    # Releasing the expired slot late takes nothing from the new one.
    assert await counters.release_child(abandoned) is False
    assert await counters.usage("p1", "t1") == DelegationUsage(1, 2, 2)


async def test_release_never_goes_below_zero(stores: Stores) -> None:
    counters = stores.delegation_counters
    slot = taken(await acquire(counters))
    other = taken(await acquire(counters))
    assert await counters.release_child(slot) is True
    assert await counters.release_child(slot) is False
    assert await counters.usage("p1", "t1") == DelegationUsage(1, 2, 2)
    assert await counters.release_child(other) is True
    assert await counters.release_child(other) is False
    assert await counters.usage("p1", "t1") == DelegationUsage(0, 2, 2)
    stranger = ChildSlot(id="nope", parent="p9", tree="t9")
    assert await counters.release_child(stranger) is False
    assert await counters.usage("p9", "t9") == DelegationUsage(0, 0, 0)


async def test_counters_are_forgotten_ttl_after_the_last_acquire(stores: Stores) -> None:
    counters = stores.delegation_counters
    taken(await acquire(counters, max_total=1, slot_ttl_s=1, ttl_s=1))
    assert await acquire(counters, max_total=1, slot_ttl_s=1, ttl_s=1) == Refusal(limit="total")
    await asyncio.sleep(1.1)
    assert await counters.usage("p1", "t1") == DelegationUsage(0, 0, 0)
    taken(await acquire(counters, max_total=1, slot_ttl_s=1, ttl_s=1))


async def test_ids_that_look_like_key_parts_are_kept_apart(stores: Stores) -> None:
    counters = stores.delegation_counters
    pairs = [("c", "a}:parent:b"), ("b}:parent:c", "a"), ("p:total", "t"), ("p", "t"), ("", "")]
    for parent, tree in pairs:
        taken(await acquire(counters, parent, tree, max_total=1))
    for parent, tree in pairs:
        assert await counters.usage(parent, tree) == DelegationUsage(1, 1, 1 + (tree == "t"))


@pytest.mark.parametrize(
    "arguments",
    [
        {"max_concurrent": -1},
        {"max_total": -1},
        {"max_tree": -1},
        {"slot_ttl_s": 0},
        {"slot_ttl_s": 10, "ttl_s": 5},
    ],
)
async def test_unusable_acquire_arguments_raise(stores: Stores, arguments: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"limits|ttl"):
        await acquire(stores.delegation_counters, **arguments)


async def test_concurrent_acquires_admit_exactly_the_total_limit(stores: Stores) -> None:
    counters = stores.delegation_counters
    results = await asyncio.gather(*(acquire(counters, max_total=37) for _ in range(200)))
    assert sum(isinstance(result, ChildSlot) for result in results) == 37
    assert results.count(Refusal(limit="total")) == 163
    assert await counters.usage("p1", "t1") == DelegationUsage(37, 37, 37)


async def test_concurrent_acquires_admit_exactly_the_concurrent_limit(stores: Stores) -> None:
    counters = stores.delegation_counters
    results = await asyncio.gather(*(acquire(counters, max_concurrent=10) for _ in range(200)))
    slots = [result for result in results if isinstance(result, ChildSlot)]
    assert len(slots) == 10
    released = await asyncio.gather(*(counters.release_child(slot) for slot in slots * 2))
    assert released.count(True) == 10
    assert await counters.usage("p1", "t1") == DelegationUsage(0, 10, 10)


# --- Revocations ---------------------------------------------------------------------------------


async def test_revoked_token_is_revoked_and_no_other(stores: Stores) -> None:
    revocations = stores.revocations
    await revocations.revoke_token("jti-1", time.time() + LONG_S)
    assert await revocations.is_token_revoked("jti-1") is True
    assert await revocations.is_token_revoked("jti-2") is False
    # Tokens and trees are separate namespaces.
    assert await revocations.is_tree_killed("jti-1") is False


async def test_kill_tree_reports_a_new_kill_once(stores: Stores) -> None:
    revocations = stores.revocations
    assert await revocations.kill_tree("t1", time.time() + LONG_S) is True
    assert await revocations.kill_tree("t1", time.time() + LONG_S) is False
    assert await revocations.is_tree_killed("t1") is True
    assert await revocations.is_tree_killed("t2") is False
    assert await revocations.is_token_revoked("t1") is False


async def test_revocations_end_at_their_deadline(stores: Stores) -> None:
    revocations = stores.revocations
    until = time.time() + 1
    await revocations.revoke_token("jti-1", until)
    assert await revocations.kill_tree("t1", until) is True
    await asyncio.sleep(until - time.time() + 0.1)
    assert await revocations.is_token_revoked("jti-1") is False
    assert await revocations.is_tree_killed("t1") is False
    assert await revocations.check("jti-1", "t1") == "ok"
    assert await revocations.kill_tree("t1", time.time() + 1) is True


async def test_a_later_deadline_extends_and_an_earlier_one_never_shortens(stores: Stores) -> None:
    revocations = stores.revocations
    start = time.time()
    await revocations.revoke_token("jti-1", start + 0.5)
    await revocations.revoke_token("jti-1", start + 1.5)
    assert await revocations.kill_tree("t1", start + 1.5) is True
    assert await revocations.kill_tree("t1", start + 0.3) is False
    await asyncio.sleep(start + 1.0 - time.time())
    assert await revocations.is_token_revoked("jti-1") is True
    assert await revocations.is_tree_killed("t1") is True
    await asyncio.sleep(start + 1.7 - time.time())
    assert await revocations.check("jti-1", "t1") == "ok"


async def test_a_deadline_already_past_records_nothing(stores: Stores) -> None:
    revocations = stores.revocations
    await revocations.revoke_token("jti-1", time.time() - 1)
    assert await revocations.kill_tree("t1", time.time() - 1) is False
    assert await revocations.check("jti-1", "t1") == "ok"


async def test_check_reports_a_killed_tree_before_a_revoked_token(stores: Stores) -> None:
    revocations = stores.revocations
    until = time.time() + LONG_S
    assert await revocations.check("jti-1", "t1") == "ok"
    await revocations.revoke_token("jti-1", until)
    assert await revocations.check("jti-1", "t1") == "token_revoked"
    assert await revocations.check("jti-2", "t1") == "ok"
    await revocations.kill_tree("t1", until)
    assert await revocations.check("jti-1", "t1") == "tree_killed"
    assert await revocations.check("jti-2", "t1") == "tree_killed"
    assert await revocations.check("jti-1", "t2") == "token_revoked"


async def acquire_unrevoked(
    stores: Stores, parent: str = "p1", tree: str = "t1", **limits: int
) -> ChildSlot | Refusal | str:
    bounds = {"max_concurrent": 0, "max_total": 0, "max_tree": 0, **limits}
    return await stores.delegation_counters.acquire_unrevoked(
        stores.revocations, parent, tree, **bounds, slot_ttl_s=LONG_S, ttl_s=LONG_S
    )


async def test_acquire_unrevoked_takes_a_slot_as_acquire_does(stores: Stores) -> None:
    slot = await acquire_unrevoked(stores, max_total=1)
    assert isinstance(slot, ChildSlot) and (slot.parent, slot.tree) == ("p1", "t1")
    assert await acquire_unrevoked(stores, max_total=1) == Refusal(limit="total")
    assert await stores.delegation_counters.release_child(slot) is True
    assert await stores.delegation_counters.usage("p1", "t1") == DelegationUsage(0, 1, 1)


async def test_acquire_unrevoked_counts_nothing_for_a_revoked_token(stores: Stores) -> None:
    until = time.time() + LONG_S
    await stores.revocations.revoke_token("p1", until)
    assert await acquire_unrevoked(stores, "p1", "t1") == "token_revoked"
    assert await stores.delegation_counters.usage("p1", "t1") == DelegationUsage(0, 0, 0)
    taken(await acquire_unrevoked(stores, "p2", "t1"))  # another token of the tree
    await stores.revocations.kill_tree("t1", until)
    # A killed tree is named first, and refuses every token of it; a limit comes after both.
    assert await acquire_unrevoked(stores, "p1", "t1", max_tree=1) == "tree_killed"
    assert await acquire_unrevoked(stores, "p2", "t1") == "tree_killed"
    assert await stores.delegation_counters.usage("p2", "t1") == DelegationUsage(1, 1, 1)
    assert await acquire_unrevoked(stores, "p1", "t2") == "token_revoked"


async def test_acquire_unrevoked_refuses_unusable_arguments(stores: Stores) -> None:
    with pytest.raises(ValueError):
        await acquire_unrevoked(stores, max_total=-1)


# --- TaskTreeIndex -------------------------------------------------------------------------------


async def test_tree_index_adds_lists_sorted_and_removes(stores: Stores) -> None:
    trees = stores.task_trees
    assert await trees.members("t1") == []
    for agent, task_id in [("b", "t-2"), ("a:b", "c"), ("a", "b:c"), ("b", "t-1")]:
        await trees.add("t1", agent, task_id, ttl_s=LONG_S)
    await trees.add("t1", "b", "t-1", ttl_s=LONG_S)  # again: still one entry
    await trees.add("t2", "z", "elsewhere", ttl_s=LONG_S)
    expected = [("a", "b:c"), ("a:b", "c"), ("b", "t-1"), ("b", "t-2")]
    assert await trees.members("t1") == expected
    await trees.remove("t1", "a:b", "c")
    await trees.remove("t1", "a:b", "c")  # twice, and unknown ones, are no-ops
    await trees.remove("t1", "nobody", "x")
    await trees.remove("t9", "a", "b:c")
    assert await trees.members("t1") == [("a", "b:c"), ("b", "t-1"), ("b", "t-2")]
    assert await trees.members("t2") == [("z", "elsewhere")]


async def test_tree_index_entries_expire_one_by_one(stores: Stores) -> None:
    trees = stores.task_trees
    await trees.add("t1", "a", "short", ttl_s=1)
    await trees.add("t1", "a", "long", ttl_s=3)
    await trees.add("t1", "a", "refreshed", ttl_s=1)
    await asyncio.sleep(0.6)
    await trees.add("t1", "a", "refreshed", ttl_s=1)
    await asyncio.sleep(0.6)
    assert await trees.members("t1") == [("a", "long"), ("a", "refreshed")]
    await asyncio.sleep(0.6)
    assert await trees.members("t1") == [("a", "long")]


async def test_tree_index_needs_a_positive_ttl(stores: Stores) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await stores.task_trees.add("t1", "a", "t", ttl_s=0)


# --- Redis only: key layout, several processes, outage -------------------------------------------


def redis_backend(url: str, prefix: str = "outage") -> StoreBackend:
    return open_backend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))


async def test_redis_keys_of_one_tree_share_a_slot(redis_url: str, redis_key_prefix: str) -> None:
    backend = redis_backend(redis_url, redis_key_prefix)
    stores = backend.stores()
    tree = "tree{with}braces"
    try:
        taken(await acquire(stores.delegation_counters, "p1", tree))
        taken(await acquire(stores.delegation_counters, "p2", tree))
        await stores.revocations.kill_tree(tree, time.time() + LONG_S)
        await stores.revocations.revoke_token("jti-1", time.time() + LONG_S)
        await stores.task_trees.add(tree, "agent", "task", ttl_s=LONG_S)
    finally:
        await backend.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{redis_key_prefix}:*")]
    finally:
        client.close()
    tree_keys = [key for key in keys if key.startswith(f"{redis_key_prefix}:dlg:")]
    # Two parents x (in flight, total), the tree's size, its kill and its task index.
    assert len(tree_keys) == 7
    assert len({key_slot(key.encode()) for key in tree_keys}) == 1
    assert sorted(set(keys) - set(tree_keys)) == [f"{redis_key_prefix}:revoked:jti-1"]


_ACQUIRE_IN_A_PROCESS = """
import asyncio, sys
from broker.settings import StoreSettings
from broker.stores.base import ChildSlot
from broker.stores.factory import open_backend

async def main(url, prefix):
    backend = open_backend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))
    try:
        await backend.ping()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        counters = backend.stores().delegation_counters
        results = await asyncio.gather(*(
            counters.acquire_child("p1", "t1", max_concurrent=0, max_total=50, max_tree=0,
                                   slot_ttl_s=600, ttl_s=600)
            for _ in range(100)
        ))
        print(sum(isinstance(result, ChildSlot) for result in results), flush=True)
    finally:
        await backend.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_processes_sharing_redis_admit_exactly_the_limit(
    redis_url: str, redis_key_prefix: str
) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ACQUIRE_IN_A_PROCESS,
            redis_url,
            redis_key_prefix,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        async with asyncio.timeout(60):
            for process in processes:  # all connected before any fires
                assert process.stdout is not None
                assert await process.stdout.readline() == b"ready\n"
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                await process.stdin.drain()
            outputs = [await process.communicate() for process in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert sum(int(stdout) for stdout, _ in outputs) == 50
    backend = redis_backend(redis_url, redis_key_prefix)
    try:
        usage = await backend.stores().delegation_counters.usage("p1", "t1")
    finally:
        await backend.close()
    assert usage == DelegationUsage(50, 50, 50)


def every_operation(stores: Stores) -> list[Callable[[], Awaitable[object]]]:
    slot = ChildSlot(id="s", parent="p1", tree="t1")
    until = time.time() + LONG_S
    return [
        lambda: acquire(stores.delegation_counters),
        lambda: stores.delegation_counters.release_child(slot),
        lambda: stores.delegation_counters.usage("p1", "t1"),
        lambda: stores.revocations.revoke_token("jti-1", until),
        lambda: stores.revocations.is_token_revoked("jti-1"),
        lambda: stores.revocations.kill_tree("t1", until),
        lambda: stores.revocations.is_tree_killed("t1"),
        lambda: stores.revocations.check("jti-1", "t1"),
        lambda: stores.task_trees.add("t1", "a", "t", ttl_s=60),
        lambda: stores.task_trees.members("t1"),
        lambda: stores.task_trees.remove("t1", "a", "t"),
    ]


async def test_unreachable_redis_raises_store_unavailable(unused_tcp_port: int) -> None:
    backend = redis_backend(f"redis://127.0.0.1:{unused_tcp_port}/0")
    try:
        for operation in every_operation(backend.stores()):
            with pytest.raises(StoreUnavailableError) as raised:
                await operation()
            assert str(raised.value) == StoreUnavailableError.default_message
            assert isinstance(raised.value.__cause__, redis.RedisError)
    finally:
        await backend.close()

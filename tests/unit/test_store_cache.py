"""The read cache answers repeated reads locally, forgets after its TTL, and never serves a
value this process itself has just changed."""

from __future__ import annotations

from broker.stores.base import AgentRecord
from broker.stores.cache import with_read_cache
from broker.stores.memory import MemoryBackend


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, status: str = "active") -> AgentRecord:
    return AgentRecord(name=name, card_json="{}", status=status)  # type: ignore[arg-type]


async def test_reads_are_cached_until_the_ttl_passes() -> None:
    shared = MemoryBackend().stores()  # stands for the store every replica shares
    clock = Clock()
    here = with_read_cache(shared, 0.5, clock)
    await shared.registry.put(record("a"))
    assert (await here.registry.get("a")).status == "active"  # type: ignore[union-attr]
    await shared.registry.set_status("a", "suspended", 1.0)  # another replica suspends it
    assert (await here.registry.get("a")).status == "active"  # type: ignore[union-attr]
    clock.now = 0.6
    assert (await here.registry.get("a")).status == "suspended"  # type: ignore[union-attr]


async def test_changes_made_through_this_process_are_seen_at_once() -> None:
    shared = MemoryBackend().stores()
    here = with_read_cache(shared, 60, Clock())
    await here.registry.put(record("a"))
    assert (await here.registry.get("a")) is not None
    await here.registry.set_status("a", "suspended", 1.0)
    assert (await here.registry.get("a")).status == "suspended"  # type: ignore[union-attr]
    await here.registry.delete("a")
    assert await here.registry.get("a") is None

    await here.credentials.replace("a", "d1")
    assert await here.credentials.lookup("d1") == "a"
    await here.credentials.replace("a", "d2")  # rotation: the old digest stops at once
    assert await here.credentials.lookup("d1") is None
    await here.credentials.revoke_agent("a")
    assert await here.credentials.lookup("d2") is None


async def test_a_zero_ttl_leaves_the_stores_alone() -> None:
    stores = MemoryBackend().stores()
    assert with_read_cache(stores, 0) is stores

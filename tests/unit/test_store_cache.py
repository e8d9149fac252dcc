"""The read cache answers repeated reads locally, forgets after its TTL, and never serves a
value this process itself has just changed."""

from __future__ import annotations

import asyncio

from broker.stores.base import AgentRecord
from broker.stores.cache import CachedAgentRegistry, with_read_cache
from broker.stores.memory import MemoryAgentRegistry, MemoryBackend


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


class Notes:
    """Stands for the control channel: what the cache told the other replicas."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def __call__(self, kind: str, name: str) -> None:
        self.sent.append((kind, name))


async def test_every_write_is_told_to_the_other_replicas_and_their_forget_takes_effect() -> None:
    shared = MemoryBackend().stores()
    notes = Notes()
    here = with_read_cache(shared, 60, Clock(), notify=notes)  # type: ignore[arg-type]
    there = with_read_cache(shared, 60, Clock())
    await here.registry.put(record("a"))
    assert (await there.registry.get("a")).status == "active"  # type: ignore[union-attr]
    await here.registry.set_status("a", "suspended", 1.0)
    await here.credentials.replace("a", "d1")
    await here.credentials.revoke_agent("a")
    await here.registry.delete("a")
    assert notes.sent == [("agent", "a"), ("agent", "a"), ("credentials", ""),
                          ("credentials", ""), ("agent", "a")]  # fmt: skip
    # The other replica still holds what it read until the message reaches it ...
    assert (await there.registry.get("a")).status == "active"  # type: ignore[union-attr]
    assert isinstance(there.registry, CachedAgentRegistry)
    there.registry.forget("a")
    assert await there.registry.get("a") is None


class SlowRegistry(MemoryAgentRegistry):
    """A registry whose reads wait for a gate: a read under way while a write lands."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def get(self, name: str) -> AgentRecord | None:
        found = await super().get(name)
        await self.gate.wait()
        return found


async def test_a_read_under_way_when_an_entry_is_dropped_is_not_cached() -> None:
    inner = SlowRegistry()
    await inner.put(record("a"))
    cached = CachedAgentRegistry(inner, 60, Clock())
    reading = asyncio.create_task(cached.get("a"))  # reads "active" and waits
    await asyncio.sleep(0)
    await inner.set_status("a", "suspended", 1.0)  # another replica suspends it ...
    cached.forget("a")  # ... and says so while the read is still under way
    inner.gate.set()
    assert (await reading).status == "active"  # type: ignore[union-attr]
    assert (await cached.get("a")).status == "suspended"  # type: ignore[union-attr]

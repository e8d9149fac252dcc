"""The read cache answers repeated reads locally, forgets after its TTL, and never serves a
value this process itself has just changed."""

from __future__ import annotations

import asyncio

import pytest

from broker.errors import StoreUnavailableError
from broker.stores.base import AgentRecord
from broker.stores.cache import CachedAgentRegistry, CachedCredentialStore, with_read_cache
from broker.stores.memory import MemoryAgentRegistry, MemoryBackend, MemoryCredentialStore


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
        self.reading = asyncio.Event()  # set once a read has what it will answer
        self.reads = 0

    async def get(self, name: str) -> AgentRecord | None:
        self.reads += 1
        found = await super().get(name)
        self.reading.set()
        await self.gate.wait()
        return found


async def cached_a(inner: SlowRegistry) -> CachedAgentRegistry:
    """A cache in front of ``inner``, which holds the agent "a" (active)."""
    await inner.put(record("a"))
    return CachedAgentRegistry(inner, 60, Clock())


async def test_a_read_under_way_when_an_entry_is_dropped_is_not_cached() -> None:
    inner = SlowRegistry()
    cached = await cached_a(inner)
    reading = asyncio.create_task(cached.get("a"))  # reads "active" and waits
    await inner.reading.wait()
    await inner.set_status("a", "suspended", 1.0)  # another replica suspends it ...
    cached.forget("a")  # ... and says so while the read is still under way
    inner.gate.set()
    assert (await reading).status == "active"  # type: ignore[union-attr]
    assert (await cached.get("a")).status == "suspended"  # type: ignore[union-attr]


async def test_concurrent_misses_of_one_key_share_one_read() -> None:
    inner = SlowRegistry()
    cached = await cached_a(inner)
    readers = [asyncio.create_task(cached.get("a")) for _ in range(16)]
    await inner.reading.wait()
    inner.gate.set()
    answers = await asyncio.gather(*readers)
    assert inner.reads == 1
    assert all(answer is answers[0] and answer.status == "active" for answer in answers)  # type: ignore[union-attr]
    assert (await cached.get("a")) is answers[0]  # and it is cached
    assert inner.reads == 1


async def test_a_read_that_starts_after_a_drop_does_not_join_one_from_before_it() -> None:
    inner = SlowRegistry()
    cached = await cached_a(inner)
    before = asyncio.create_task(cached.get("a"))
    await inner.reading.wait()  # it has read "active"
    await inner.set_status("a", "suspended", 1.0)  # another replica suspends it ...
    cached.forget("a")  # ... and says so
    after = asyncio.create_task(cached.get("a"))
    await asyncio.sleep(0)
    inner.gate.set()
    assert (await before).status == "active"  # type: ignore[union-attr]
    assert (await after).status == "suspended"  # type: ignore[union-attr]
    assert inner.reads == 2
    assert (await cached.get("a")).status == "suspended"  # type: ignore[union-attr]
    assert inner.reads == 2


class FailingRegistry(SlowRegistry):
    async def get(self, name: str) -> AgentRecord | None:
        await super().get(name)
        raise StoreUnavailableError("the store is down")


async def test_a_shared_read_that_fails_fails_every_reader_and_is_not_cached() -> None:
    inner = FailingRegistry()
    cached = await cached_a(inner)
    readers = [asyncio.create_task(cached.get("a")) for _ in range(5)]
    await inner.reading.wait()
    inner.gate.set()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(outcome, StoreUnavailableError) for outcome in outcomes)
    assert inner.reads == 1
    with pytest.raises(StoreUnavailableError):
        await cached.get("a")  # the next miss reads again
    assert inner.reads == 2


async def test_a_reader_that_is_cancelled_leaves_the_others_their_answer() -> None:
    inner = SlowRegistry()
    cached = await cached_a(inner)
    first = asyncio.create_task(cached.get("a"))  # the one whose read the others join
    await inner.reading.wait()
    second = asyncio.create_task(cached.get("a"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    inner.gate.set()
    assert (await second).status == "active"  # type: ignore[union-attr]
    assert first.cancelled()
    assert (await cached.get("a")).status == "active"  # type: ignore[union-attr]
    assert inner.reads == 1


class SlowCredentials(MemoryCredentialStore):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.lookups = 0

    async def lookup(self, digest: str) -> str | None:
        self.lookups += 1
        await self.gate.wait()
        return await super().lookup(digest)


async def test_concurrent_misses_of_one_credential_share_one_lookup() -> None:
    inner = SlowCredentials()
    await inner.replace("a", "d1")
    cached = CachedCredentialStore(inner, 60, Clock())
    readers = [asyncio.create_task(cached.lookup("d1")) for _ in range(8)]
    others = [asyncio.create_task(cached.lookup("d2")) for _ in range(3)]
    await asyncio.sleep(0.01)
    inner.gate.set()
    assert await asyncio.gather(*readers) == ["a"] * 8
    assert await asyncio.gather(*others) == [None] * 3
    assert inner.lookups == 2  # one per digest

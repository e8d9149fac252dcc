"""A short-lived read cache in front of the shared registry and credential stores.

Every mediated request reads the caller's credential, the caller's record and the target's
record. With a shared (Redis) store that is three round trips on the hot path; this cache keeps
each answer for ``ttl_s`` (default 0.5 s) per process. A write through this process drops its
own entry at once and then calls ``notify`` (``broker/runtime/control.py`` publishes it to every
replica, whose ``forget`` drops theirs), so a suspension, resume, deletion or credential
rotation holds on every replica within a pub/sub round trip; ``ttl_s`` bounds the staleness
only when such a message is lost (a replica whose subscription was down forgets everything
once it is back). A read that was under way while an entry was dropped is not cached, so it
cannot put the old answer back. Open streams are rechecked about once a second regardless.

Concurrent misses of one key share one read of the store (decision 0101): when an entry expires
under load, every request in flight misses it at once, and each used to read the store on its
own (at 16 requests in flight, 14 reads where one would do). A read joins only a read of its
own generation, one started after the last drop, so nobody who starts after a write is handed
an answer read before it. The shared read runs as its own task: a caller that is cancelled
(its client went away) does not take the others' answer with it.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Literal, TypeVar

import msgspec

from broker.stores.base import AgentRecord, AgentRegistry, AgentStatus, CredentialStore, Stores

_V = TypeVar("_V")
_MAX_ENTRIES = 100_000
# Told after a write went through: ("agent", name) or ("credentials", "").
ChangeKind = Literal["agent", "credentials"]
Notify = Callable[[ChangeKind, str], Awaitable[None]]


class _TtlCache(Generic[_V]):
    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, _V]] = {}
        # Bumped by every drop: a read started before a drop must not be cached after it.
        self.generation = 0
        # The store reads under way, by key: the generation each started in, and its task.
        self._reads: dict[str, tuple[int, asyncio.Task[_V]]] = {}

    def get(self, key: str) -> tuple[bool, _V | None]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            return False, None
        return True, entry[1]

    async def read_through(self, key: str, read: Callable[[str], Awaitable[_V]]) -> _V:
        """``read(key)``'s answer, cached (a miss's path: ``get`` said no). A read of ``key``
        that started in this generation and is still under way is joined, not repeated; its
        failure is every joiner's."""
        generation = self.generation
        under_way = self._reads.get(key)
        if under_way is None or under_way[0] != generation:
            task = asyncio.ensure_future(self._read(key, read, generation))
            under_way = (generation, task)
            self._reads[key] = under_way
            task.add_done_callback(lambda done: self._read_done(key, done))
        # Shielded: a joiner that is cancelled leaves the read to the others (and the cache).
        return await asyncio.shield(under_way[1])

    async def _read(self, key: str, read: Callable[[str], Awaitable[_V]], generation: int) -> _V:
        value = await read(key)
        self.put(key, value, generation)
        return value

    def _read_done(self, key: str, done: asyncio.Task[_V]) -> None:
        under_way = self._reads.get(key)
        if under_way is not None and under_way[1] is done:
            del self._reads[key]  # a later generation's read of the key stays
        if not done.cancelled():
            done.exception()  # every joiner may have gone: the failure is not left unread

    def put(self, key: str, value: _V, generation: int) -> None:
        if generation != self.generation:
            return  # dropped while it was being read: the answer may be the old one
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()  # crude but bounded; entries live half a second anyway
        self._entries[key] = (self._clock() + self._ttl_s, value)

    def drop(self, key: str | None = None) -> None:
        self.generation += 1
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)


async def _nobody(kind: ChangeKind, name: str) -> None:
    return None


class CachedAgentRegistry(AgentRegistry):
    def __init__(
        self,
        inner: AgentRegistry,
        ttl_s: float,
        clock: Callable[[], float],
        notify: Notify = _nobody,
    ) -> None:
        self._inner = inner
        self._cache: _TtlCache[AgentRecord | None] = _TtlCache(ttl_s, clock)
        self._notify = notify

    def forget(self, name: str | None = None) -> None:
        """Drop ``name`` (None: every entry); another replica changed it."""
        self._cache.drop(name)

    async def get(self, name: str) -> AgentRecord | None:
        hit, record = self._cache.get(name)
        if hit:
            return record
        return await self._cache.read_through(name, self._inner.get)

    async def create(self, record: AgentRecord) -> bool:
        self._cache.drop(record.name)
        created = await self._inner.create(record)
        await self._changed(record.name)
        return created

    async def put(self, record: AgentRecord) -> None:
        self._cache.drop(record.name)
        await self._inner.put(record)
        await self._changed(record.name)

    async def list(self) -> builtins.list[AgentRecord]:
        return await self._inner.list()

    async def delete(self, name: str) -> bool:
        self._cache.drop(name)
        deleted = await self._inner.delete(name)
        await self._changed(name)
        return deleted

    async def set_status(self, name: str, status: AgentStatus, now: float) -> AgentRecord | None:
        self._cache.drop(name)
        record = await self._inner.set_status(name, status, now)
        await self._changed(name)
        return record

    async def _changed(self, name: str) -> None:
        self._cache.drop(name)  # a read racing the write may have cached the old record
        await self._notify("agent", name)


class CachedCredentialStore(CredentialStore):
    def __init__(
        self,
        inner: CredentialStore,
        ttl_s: float,
        clock: Callable[[], float],
        notify: Notify = _nobody,
    ) -> None:
        self._inner = inner
        self._cache: _TtlCache[str | None] = _TtlCache(ttl_s, clock)
        self._notify = notify

    def forget(self) -> None:
        """Drop every entry; another replica changed a credential."""
        self._cache.drop()

    async def lookup(self, digest: str) -> str | None:
        hit, agent = self._cache.get(digest)
        if hit:
            return agent
        return await self._cache.read_through(digest, self._inner.lookup)

    async def replace(self, agent: str, digest: str) -> None:
        self._cache.drop()  # the old digest of this agent is not known here: forget them all
        await self._inner.replace(agent, digest)
        await self._changed()

    async def revoke_agent(self, agent: str) -> int:
        self._cache.drop()
        revoked = await self._inner.revoke_agent(agent)
        await self._changed()
        return revoked

    async def _changed(self) -> None:
        self._cache.drop()
        await self._notify("credentials", "")


def with_read_cache(
    stores: Stores,
    ttl_s: float,
    clock: Callable[[], float] = time.monotonic,
    notify: Notify = _nobody,
) -> Stores:
    """``stores`` with the registry and credential reads cached for ``ttl_s`` (0: unchanged);
    ``notify`` is told of every write that went through (to tell the other replicas)."""
    if ttl_s <= 0:
        return stores
    return msgspec.structs.replace(
        stores,
        registry=CachedAgentRegistry(stores.registry, ttl_s, clock, notify),
        credentials=CachedCredentialStore(stores.credentials, ttl_s, clock, notify),
    )

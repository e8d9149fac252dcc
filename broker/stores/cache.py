"""A short-lived read cache in front of the shared registry and credential stores.

Every mediated request reads the caller's credential, the caller's record and the target's
record. With a shared (Redis) store that is three round trips on the hot path; this cache keeps
each answer for ``ttl_s`` (default 0.5 s) per process. The cost is bounded staleness: a
suspension, deletion or credential rotation made on *another* replica takes effect here within
``ttl_s``; one made through *this* replica takes effect at once (writes invalidate). Open
streams are rechecked about once a second regardless.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from broker.stores.base import AgentRecord, AgentRegistry, AgentStatus, CredentialStore, Stores

_V = TypeVar("_V")
_MAX_ENTRIES = 100_000


class _TtlCache(Generic[_V]):
    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, _V]] = {}

    def get(self, key: str) -> tuple[bool, _V | None]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            return False, None
        return True, entry[1]

    def put(self, key: str, value: _V) -> None:
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()  # crude but bounded; entries live half a second anyway
        self._entries[key] = (self._clock() + self._ttl_s, value)

    def drop(self, key: str | None = None) -> None:
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)


class CachedAgentRegistry(AgentRegistry):
    def __init__(self, inner: AgentRegistry, ttl_s: float, clock: Callable[[], float]) -> None:
        self._inner = inner
        self._cache: _TtlCache[AgentRecord | None] = _TtlCache(ttl_s, clock)

    async def get(self, name: str) -> AgentRecord | None:
        hit, record = self._cache.get(name)
        if hit:
            return record
        record = await self._inner.get(name)
        self._cache.put(name, record)
        return record

    async def create(self, record: AgentRecord) -> bool:
        self._cache.drop(record.name)
        return await self._inner.create(record)

    async def put(self, record: AgentRecord) -> None:
        self._cache.drop(record.name)
        await self._inner.put(record)

    async def list(self) -> builtins.list[AgentRecord]:
        return await self._inner.list()

    async def delete(self, name: str) -> bool:
        self._cache.drop(name)
        return await self._inner.delete(name)

    async def set_status(self, name: str, status: AgentStatus, now: float) -> AgentRecord | None:
        self._cache.drop(name)
        return await self._inner.set_status(name, status, now)


class CachedCredentialStore(CredentialStore):
    def __init__(self, inner: CredentialStore, ttl_s: float, clock: Callable[[], float]) -> None:
        self._inner = inner
        self._cache: _TtlCache[str | None] = _TtlCache(ttl_s, clock)

    async def lookup(self, digest: str) -> str | None:
        hit, agent = self._cache.get(digest)
        if hit:
            return agent
        agent = await self._inner.lookup(digest)
        self._cache.put(digest, agent)
        return agent

    async def replace(self, agent: str, digest: str) -> None:
        self._cache.drop()  # the old digest of this agent is not known here: forget them all
        await self._inner.replace(agent, digest)

    async def revoke_agent(self, agent: str) -> int:
        self._cache.drop()
        return await self._inner.revoke_agent(agent)


def with_read_cache(
    stores: Stores, ttl_s: float, clock: Callable[[], float] = time.monotonic
) -> Stores:
    """``stores`` with the registry and credential reads cached for ``ttl_s`` (0: unchanged)."""
    if ttl_s <= 0:
        return stores
    return msgspec.structs.replace(
        stores,
        registry=CachedAgentRegistry(stores.registry, ttl_s, clock),
        credentials=CachedCredentialStore(stores.credentials, ttl_s, clock),
    )

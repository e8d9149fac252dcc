"""The embedded backend's delegation state: fan-out counters, revocations, task trees.

As in ``memory.py``, no operation awaits between its read and its write, so on one event loop each
is atomic exactly as the Redis scripts are. Slots and counters expire on the monotonic clock;
revocations on the wall clock, since their deadlines are Unix times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from broker.ids import new_id
from broker.stores.base import (
    ChildSlot,
    DelegationCounters,
    DelegationLimit,
    DelegationUsage,
    Refusal,
    Revocations,
    RevocationStatus,
    TaskTreeIndex,
    check_acquire_arguments,
)

# Expired entries are dropped when touched; a full sweep at most this often bounds the memory
# held by entries that are never asked for again, at O(entries) per sweep.
_SWEEP_INTERVAL_S = 60.0

_K = TypeVar("_K")
_V = TypeVar("_V")


class _ExpiringMap(Generic[_K, _V]):
    """A dict whose entries vanish at a deadline on ``clock``, like Redis keys with a TTL."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[_K, tuple[_V, float]] = {}
        self._next_sweep = clock() + _SWEEP_INTERVAL_S

    def get(self, key: _K) -> _V | None:
        now = self._clock()
        self._sweep(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: _K, value: _V, expires_at: float) -> None:
        self._entries[key] = (value, expires_at)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_S
        expired = [key for key, (_, expires_at) in self._entries.items() if expires_at <= now]
        for key in expired:
            del self._entries[key]


@dataclass
class _ParentCounts:
    # Slot id -> monotonic expiry; expired slots are dropped before anything counts them.
    slots: dict[str, float] = field(default_factory=dict)
    total: int = 0

    def in_flight(self, now: float) -> int:
        self.slots = {slot: expires for slot, expires in self.slots.items() if expires > now}
        return len(self.slots)


def _limit_reached(
    counts: DelegationUsage, max_concurrent: int, max_total: int, max_tree: int
) -> DelegationLimit | None:
    # Limits that waiting cannot lift come first (see DelegationCounters.acquire_child).
    if max_total and counts.total_children >= max_total:
        return "total"
    if max_tree and counts.tree_size >= max_tree:
        return "tree"
    if max_concurrent and counts.in_flight >= max_concurrent:
        return "concurrent"
    return None


class MemoryDelegationCounters(DelegationCounters):
    """Counters in expiring dicts. Same contract as ``DelegationCounters``; never unavailable."""

    def __init__(self) -> None:
        self._parents: _ExpiringMap[tuple[str, str], _ParentCounts] = _ExpiringMap(time.monotonic)
        self._trees: _ExpiringMap[str, int] = _ExpiringMap(time.monotonic)

    async def acquire_child(
        self,
        parent: str,
        tree: str,
        *,
        max_concurrent: int,
        max_total: int,
        max_tree: int,
        slot_ttl_s: int,
        ttl_s: int,
    ) -> ChildSlot | Refusal:
        check_acquire_arguments(max_concurrent, max_total, max_tree, slot_ttl_s, ttl_s)
        now = time.monotonic()
        counts = self._parents.get((tree, parent)) or _ParentCounts()
        size = self._trees.get(tree) or 0
        seen = DelegationUsage(counts.in_flight(now), counts.total, size)
        limit = _limit_reached(seen, max_concurrent, max_total, max_tree)
        if limit is not None:
            return Refusal(limit=limit)
        slot = ChildSlot(id=new_id(), parent=parent, tree=tree)
        counts.slots[slot.id] = now + slot_ttl_s
        counts.total += 1
        self._parents.put((tree, parent), counts, now + ttl_s)
        self._trees.put(tree, size + 1, now + ttl_s)
        return slot

    async def release_child(self, slot: ChildSlot) -> bool:
        counts = self._parents.get((slot.tree, slot.parent))
        if counts is None:
            return False
        expires_at = counts.slots.pop(slot.id, None)
        return expires_at is not None and expires_at > time.monotonic()

    async def usage(self, parent: str, tree: str) -> DelegationUsage:
        counts = self._parents.get((tree, parent)) or _ParentCounts()
        in_flight = counts.in_flight(time.monotonic())
        return DelegationUsage(in_flight, counts.total, self._trees.get(tree) or 0)


class MemoryRevocations(Revocations):
    """Revocation deadlines in expiring dicts. Same contract as ``Revocations``."""

    def __init__(self) -> None:
        self._tokens: _ExpiringMap[str, float] = _ExpiringMap(time.time)
        self._trees: _ExpiringMap[str, float] = _ExpiringMap(time.time)

    async def revoke_token(self, jti: str, until: float) -> None:
        _extend(self._tokens, jti, until)

    async def is_token_revoked(self, jti: str) -> bool:
        return self._tokens.get(jti) is not None

    async def kill_tree(self, tree: str, until: float) -> bool:
        return _extend(self._trees, tree, until)

    async def is_tree_killed(self, tree: str) -> bool:
        return self._trees.get(tree) is not None

    async def check(self, jti: str, tree: str) -> RevocationStatus:
        if self._trees.get(tree) is not None:
            return "tree_killed"
        if self._tokens.get(jti) is not None:
            return "token_revoked"
        return "ok"


def _extend(entries: _ExpiringMap[str, float], key: str, until: float) -> bool:
    """Hold ``key`` until ``until`` or its current deadline, the later; True if newly held."""
    if until <= time.time():
        return False
    current = entries.get(key)
    if current is None or current < until:
        entries.put(key, until, until)
    return current is None


class MemoryTaskTreeIndex(TaskTreeIndex):
    """Each tree's tasks with their own expiry. Same contract as ``TaskTreeIndex``."""

    def __init__(self) -> None:
        # Tree -> {(agent, task_id): monotonic expiry}; a tree lives as long as its last task.
        self._trees: _ExpiringMap[str, dict[tuple[str, str], float]] = _ExpiringMap(time.monotonic)

    async def add(self, tree: str, agent: str, task_id: str, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        now = time.monotonic()
        tasks = self._live(tree, now)
        tasks[(agent, task_id)] = now + ttl_s
        self._trees.put(tree, tasks, max(tasks.values()))

    async def members(self, tree: str) -> list[tuple[str, str]]:
        return sorted(self._live(tree, time.monotonic()))

    async def remove(self, tree: str, agent: str, task_id: str) -> None:
        tasks = self._trees.get(tree)
        if tasks is not None:
            tasks.pop((agent, task_id), None)

    def _live(self, tree: str, now: float) -> dict[tuple[str, str], float]:
        tasks = self._trees.get(tree) or {}
        return {task: expires for task, expires in tasks.items() if expires > now}

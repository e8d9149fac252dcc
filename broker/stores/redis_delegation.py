"""Delegation state in Redis: fan-out counters, revocations and task trees, for every replica.

Each operation that reads before it writes is one Lua script; the scripts date slots and expiries
by the Redis server's clock, so replicas with skewed clocks agree. All keys of one task tree share
the hash tag ``{<len(tree)>:<tree>}`` (the length keeps any tree id from running into the rest of
a key), so each script's keys sit in one Redis Cluster slot:

- ``<prefix>:dlg:{…}:parent:<parent>:inflight``: sorted set, slot id -> expiry (ms since epoch)
- ``<prefix>:dlg:{…}:parent:<parent>:total``: the parent's children ever acquired
- ``<prefix>:dlg:{…}:size``: hops acquired in the whole tree
- ``<prefix>:dlg:{…}:tasks``: sorted set, JSON ``[agent, task_id]`` -> expiry (ms since epoch)
- ``<prefix>:dlg:{…}:killed``: present while the tree is killed (expires at the deadline)
- ``<prefix>:revoked:<jti>``: present while the token is revoked (expires at the deadline)

Every Redis failure surfaces as ``StoreUnavailableError`` (see ``redis_client``).
"""

from __future__ import annotations

import asyncio
import math

import msgspec

from broker.ids import new_id
from broker.stores.base import (
    ChildSlot,
    DelegationCounters,
    DelegationLimit,
    DelegationUsage,
    Refusal,
    Revocations,
    RevocationStatus,
    Revoked,
    TaskTreeIndex,
    check_acquire_arguments,
)
from broker.stores.redis_client import (
    RedisClient,
    is_cluster,
    lua_source,
    unavailable_on_error,
)

_ACQUIRE_LUA = lua_source("delegation_acquire.lua")
# The revocation check in front of the acquire: one script, for a single server (see the file).
_ACQUIRE_UNREVOKED_LUA = lua_source("delegation_unrevoked.lua") + _ACQUIRE_LUA
_RELEASE_LUA = lua_source("delegation_release.lua")
_USAGE_LUA = lua_source("delegation_usage.lua")
_REVOCATION_EXTEND_LUA = lua_source("revocation_extend.lua")
_EXISTS_LUA = "return redis.call('EXISTS', KEYS[1])"
_TREE_ADD_LUA = lua_source("task_tree_add.lua")
_TREE_MEMBERS_LUA = lua_source("task_tree_members.lua")

_REFUSALS: dict[bytes, DelegationLimit] = {
    b"concurrent": "concurrent",
    b"total": "total",
    b"tree": "tree",
}
_REVOKED: dict[bytes, Revoked] = {b"tree_killed": "tree_killed", b"token_revoked": "token_revoked"}
_TASK_ENCODER = msgspec.json.Encoder()
_TASK_DECODER = msgspec.json.Decoder(tuple[str, str])


def tree_key(prefix: str, tree: str) -> str:
    """The start of every key of ``tree``; its hash tag puts them all in one cluster slot."""
    return f"{prefix}:dlg:{{{len(tree)}:{tree}}}"


class RedisDelegationCounters(DelegationCounters):
    """Counters as Redis keys under the tree's hash tag. Same contract as ``DelegationCounters``.

    ``acquire_child`` raises ValueError on unusable arguments. Every method raises
    ``StoreUnavailableError`` if Redis fails; an acquire whose reply was lost may have taken a
    slot, which then frees itself after ``slot_ttl_s``.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._acquire_unrevoked = client.register_script(_ACQUIRE_UNREVOKED_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._usage = client.register_script(_USAGE_LUA)
        self._prefix = prefix
        # A cluster keeps a script's keys in one slot; the token's revoked marker is not in its
        # tree's, so there the check and the acquire stay two steps.
        self._one_server = not is_cluster(client)

    @unavailable_on_error
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
        slot = ChildSlot(id=new_id(), parent=parent, tree=tree)
        limits = [max_concurrent, max_total, max_tree]
        refused = await self._acquire(
            keys=self._keys(parent, tree), args=[*limits, slot.id, slot_ttl_s, ttl_s]
        )
        return slot if refused is None else Refusal(limit=_REFUSALS[refused])

    async def acquire_unrevoked(
        self,
        revocations: Revocations,
        parent: str,
        tree: str,
        *,
        max_concurrent: int,
        max_total: int,
        max_tree: int,
        slot_ttl_s: int,
        ttl_s: int,
    ) -> ChildSlot | Refusal | Revoked:
        limits = {"max_concurrent": max_concurrent, "max_total": max_total, "max_tree": max_tree}
        if not (self._one_server and isinstance(revocations, RedisRevocations)
                and revocations.prefix == self._prefix):  # fmt: skip
            return await super().acquire_unrevoked(
                revocations, parent, tree, **limits, slot_ttl_s=slot_ttl_s, ttl_s=ttl_s
            )
        return await self._acquire_checked(
            revocations, parent, tree, [*limits.values(), slot_ttl_s, ttl_s]
        )

    @unavailable_on_error
    async def _acquire_checked(
        self, revocations: RedisRevocations, parent: str, tree: str, limits: list[int]
    ) -> ChildSlot | Refusal | Revoked:
        check_acquire_arguments(*limits)
        slot = ChildSlot(id=new_id(), parent=parent, tree=tree)
        keys = [*self._keys(parent, tree), *revocations.keys(parent, tree)]
        refused = await self._acquire_unrevoked(keys=keys, args=[*limits[:3], slot.id, *limits[3:]])
        if refused is None:
            return slot
        revoked = _REVOKED.get(refused)
        return revoked if revoked is not None else Refusal(limit=_REFUSALS[refused])

    @unavailable_on_error
    async def release_child(self, slot: ChildSlot) -> bool:
        in_flight_key = self._keys(slot.parent, slot.tree)[0]
        return bool(await self._release(keys=[in_flight_key], args=[slot.id]))

    @unavailable_on_error
    async def usage(self, parent: str, tree: str) -> DelegationUsage:
        in_flight, total, size = await self._usage(keys=self._keys(parent, tree))
        return DelegationUsage(int(in_flight), int(total), int(size))

    def _keys(self, parent: str, tree: str) -> list[str]:
        """In-flight set, total counter, tree size: the order the scripts expect."""
        base = tree_key(self._prefix, tree)
        return [f"{base}:parent:{parent}:inflight", f"{base}:parent:{parent}:total", f"{base}:size"]


class RedisRevocations(Revocations):
    """Revocations as Redis keys that expire at their deadline. Same contract as ``Revocations``.

    Every method raises ``StoreUnavailableError`` if Redis fails.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._extend = client.register_script(_REVOCATION_EXTEND_LUA)
        self._exists = client.register_script(_EXISTS_LUA)
        self._prefix = prefix

    @unavailable_on_error
    async def revoke_token(self, jti: str, until: float) -> None:
        await self._extend(keys=[self._token_key(jti)], args=[_epoch_ms(until)])

    @unavailable_on_error
    async def is_token_revoked(self, jti: str) -> bool:
        return bool(await self._client.exists(self._token_key(jti)))

    @unavailable_on_error
    async def kill_tree(self, tree: str, until: float) -> bool:
        return bool(await self._extend(keys=[self._tree_key(tree)], args=[_epoch_ms(until)]))

    @unavailable_on_error
    async def is_tree_killed(self, tree: str) -> bool:
        return bool(await self._client.exists(self._tree_key(tree)))

    @unavailable_on_error
    async def check(self, jti: str, tree: str) -> RevocationStatus:
        # Two reads, sent together (one round trip, shared with other requests' scripts: see
        # redis_batch): the keys hash to different slots (a token's jti does not name its
        # tree), and two reads need no atomicity between them.
        tree_killed, token_revoked = await asyncio.gather(
            self._exists(keys=[self._tree_key(tree)]), self._exists(keys=[self._token_key(jti)])
        )
        if tree_killed:
            return "tree_killed"
        return "token_revoked" if token_revoked else "ok"

    @property
    def prefix(self) -> str:
        return self._prefix

    def keys(self, jti: str, tree: str) -> tuple[str, str]:
        """The tree's killed marker and the token's revoked marker."""
        return self._tree_key(tree), self._token_key(jti)

    def _token_key(self, jti: str) -> str:
        return f"{self._prefix}:revoked:{jti}"

    def _tree_key(self, tree: str) -> str:
        return f"{tree_key(self._prefix, tree)}:killed"


def _epoch_ms(until: float) -> int:
    # Rounded up, so an entry never ends before the deadline it was given.
    return math.ceil(until * 1000)


class RedisTaskTreeIndex(TaskTreeIndex):
    """Each tree's tasks in a sorted set by expiry. Same contract as ``TaskTreeIndex``.

    ``add`` raises ValueError if ``ttl_s`` is not positive. Every method raises
    ``StoreUnavailableError`` if Redis fails.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._add = client.register_script(_TREE_ADD_LUA)
        self._members = client.register_script(_TREE_MEMBERS_LUA)
        self._prefix = prefix

    @unavailable_on_error
    async def add(self, tree: str, agent: str, task_id: str, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        await self._add(keys=[self._key(tree)], args=[_task_member(agent, task_id), ttl_s])

    @unavailable_on_error
    async def members(self, tree: str) -> list[tuple[str, str]]:
        raws = await self._members(keys=[self._key(tree)])
        return sorted(_TASK_DECODER.decode(raw) for raw in raws)

    @unavailable_on_error
    async def remove(self, tree: str, agent: str, task_id: str) -> None:
        await self._client.zrem(self._key(tree), _task_member(agent, task_id))

    def _key(self, tree: str) -> str:
        return f"{tree_key(self._prefix, tree)}:tasks"


def _task_member(agent: str, task_id: str) -> bytes:
    # JSON keeps ("a:b", "c") and ("a", "b:c") apart.
    return _TASK_ENCODER.encode((agent, task_id))

"""The embedded backend: plain dicts in one process, so the quickstart needs nothing installed.

Each operation runs without awaiting between its read and its write, so on one event loop it is
atomic exactly as the Redis scripts are. State lives as long as the process and is not shared with
other processes or replicas.
"""

from __future__ import annotations

import time

import msgspec

from broker.stores.base import (
    AgentRecord,
    AgentRegistry,
    AgentStatus,
    CredentialStore,
    StoreBackend,
    Stores,
    TaskRoute,
    TaskRouteStore,
    TaskTreeIndex,
)
from broker.stores.budget_limits import MemoryBudgetLimitStore
from broker.stores.kill_switch import MemoryKillSwitchStore
from broker.stores.memory_budget import MemoryBudgetLedger, MemoryRateLimiter
from broker.stores.memory_delegation import (
    MemoryDelegationCounters,
    MemoryRevocations,
    MemoryTaskTreeIndex,
)

# Expired task routes are dropped when touched; a full sweep at most this often bounds the memory
# held by routes that are never asked for again, at O(routes) per sweep.
_ROUTE_SWEEP_INTERVAL_S = 60.0


class MemoryAgentRegistry(AgentRegistry):
    """Agents in a dict keyed by name. Same contract as ``AgentRegistry``; never unavailable."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentRecord] = {}

    async def create(self, record: AgentRecord) -> bool:
        if record.name in self._agents:
            return False
        self._agents[record.name] = record
        return True

    async def put(self, record: AgentRecord) -> None:
        self._agents[record.name] = record

    async def get(self, name: str) -> AgentRecord | None:
        return self._agents.get(name)

    async def list(self) -> list[AgentRecord]:
        return [self._agents[name] for name in sorted(self._agents)]

    async def delete(self, name: str) -> bool:
        return self._agents.pop(name, None) is not None

    async def set_status(self, name: str, status: AgentStatus, now: float) -> AgentRecord | None:
        record = self._agents.get(name)
        if record is None:
            return None
        updated = msgspec.structs.replace(record, status=status, updated_at=now)
        self._agents[name] = updated
        return updated


class MemoryCredentialStore(CredentialStore):
    """Credential digests mapped to agents. Same contract as ``CredentialStore``.

    If one digest is handed to a second agent, it authenticates only the second from then on;
    revoking the first agent leaves it alone (the Redis backend behaves the same way).
    """

    def __init__(self) -> None:
        self._agent_by_digest: dict[str, str] = {}
        self._digests_by_agent: dict[str, set[str]] = {}

    async def replace(self, agent: str, digest: str) -> None:
        self._revoke(agent)
        previous = self._agent_by_digest.get(digest)
        if previous is not None:
            self._digests_by_agent.get(previous, set()).discard(digest)
        self._agent_by_digest[digest] = agent
        self._digests_by_agent[agent] = {digest}

    async def lookup(self, digest: str) -> str | None:
        return self._agent_by_digest.get(digest)

    async def revoke_agent(self, agent: str) -> int:
        return self._revoke(agent)

    def _revoke(self, agent: str) -> int:
        revoked = 0
        for digest in self._digests_by_agent.pop(agent, set()):
            if self._agent_by_digest.get(digest) == agent:
                del self._agent_by_digest[digest]
                revoked += 1
        return revoked


class MemoryTaskRouteStore(TaskRouteStore):
    """Task routes with a monotonic-clock expiry. Same contract as ``TaskRouteStore``.

    ``claim`` raises ValueError if ``ttl_s`` is not positive.
    """

    def __init__(self, trees: TaskTreeIndex) -> None:
        self._routes: dict[tuple[str, str], tuple[TaskRoute, float]] = {}
        self._next_sweep = time.monotonic() + _ROUTE_SWEEP_INTERVAL_S
        self._trees = trees

    async def claim(self, route: TaskRoute, ttl_s: int, tree: str | None = None) -> bool:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        now = time.monotonic()
        self._sweep(now)
        current = self._live(route.agent, route.task_id, now)
        if current is not None and current.owner != route.owner:
            return False
        self._routes[(route.agent, route.task_id)] = (route, now + ttl_s)
        if tree is not None:
            await self._trees.add(tree, route.agent, route.task_id, ttl_s)
        return True

    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        return self._live(agent, task_id, time.monotonic())

    def _live(self, agent: str, task_id: str, now: float) -> TaskRoute | None:
        entry = self._routes.get((agent, task_id))
        if entry is None:
            return None
        route, expires_at = entry
        if expires_at <= now:
            del self._routes[(agent, task_id)]
            return None
        return route

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _ROUTE_SWEEP_INTERVAL_S
        expired = [key for key, (_, expires_at) in self._routes.items() if expires_at <= now]
        for key in expired:
            del self._routes[key]


class MemoryBackend(StoreBackend):
    """The in-process backend: always available, nothing to open or close."""

    def __init__(self) -> None:
        trees = MemoryTaskTreeIndex()
        self._stores = Stores(
            registry=MemoryAgentRegistry(),
            credentials=MemoryCredentialStore(),
            task_routes=MemoryTaskRouteStore(trees),
            delegation_counters=MemoryDelegationCounters(),
            revocations=MemoryRevocations(),
            task_trees=trees,
            budgets=MemoryBudgetLedger(),
            rate_limiter=MemoryRateLimiter(),
            budget_limits=MemoryBudgetLimitStore(),
            kill_switch=MemoryKillSwitchStore(),
        )

    def stores(self) -> Stores:
        return self._stores

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

"""The embedded backend: plain dicts in one process, so the quickstart needs nothing installed.

Each operation runs without awaiting between its read and its write, so on one event loop it is
atomic exactly as the Redis scripts are. State lives as long as the process and is not shared with
other processes or replicas.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import msgspec

from broker.errors import StoreFullError
from broker.stores.alert_base import AlertState
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
from broker.stores.mcp_servers import MemoryMcpServerStore
from broker.stores.memory_alerts import MemoryAlertState
from broker.stores.memory_approvals import MemoryApprovalStore
from broker.stores.memory_budget import MemoryBudgetLedger, MemoryRateLimiter
from broker.stores.memory_delegation import (
    MemoryDelegationCounters,
    MemoryRevocations,
    MemoryTaskTreeIndex,
)
from broker.stores.traffic_base import MemoryRecentTraffic, RecentTraffic

# Expired task routes are dropped when touched; a full sweep at most this often bounds the memory
# held by routes that are never asked for again, at O(routes) per sweep.
_ROUTE_SWEEP_INTERVAL_S = 60.0
# When full of running tasks, a full sweep for expired ones at most this often.
_FORCED_SWEEP_INTERVAL_S = 1.0


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
    """Task routes with a monotonic-clock expiry and a capacity. Same contract as
    ``TaskRouteStore``.

    At ``max_tasks`` routes, a new route first makes room by forgetting expired routes, then
    routes of finished tasks, oldest first; if only running tasks' routes remain it is refused
    with ``StoreFullError`` (the caller fails closed: nothing is forgotten silently that a
    running task still needs). ``claim`` raises ValueError if ``ttl_s`` is not positive.
    Each entry holds only the owner and its expiry: agent and task id are the key.
    """

    def __init__(self, trees: TaskTreeIndex, max_tasks: int = 100_000) -> None:
        self._routes: dict[tuple[str, str], tuple[str, float]] = {}
        # Routes of tasks that had ended when claimed, oldest claim first: forgotten first.
        self._finished: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._next_sweep = time.monotonic() + _ROUTE_SWEEP_INTERVAL_S
        self._next_forced_sweep = 0.0
        self._trees = trees
        self._max_tasks = max_tasks

    async def claim(
        self, route: TaskRoute, ttl_s: int, tree: str | None = None, *, finished: bool = False
    ) -> bool:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        now = time.monotonic()
        self._sweep(now)
        key = (route.agent, route.task_id)
        current = self._live(route.agent, route.task_id, now)
        if current is not None and current.owner != route.owner:
            return False
        if current is None:
            self._make_room(now)
        self._routes[key] = (route.owner, now + ttl_s)
        if finished:
            self._finished[key] = None
            self._finished.move_to_end(key)
        else:
            self._finished.pop(key, None)
        if tree is not None:
            await self._trees.add(tree, route.agent, route.task_id, ttl_s)
        return True

    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        return self._live(agent, task_id, time.monotonic())

    def __len__(self) -> int:
        return len(self._routes)

    def _live(self, agent: str, task_id: str, now: float) -> TaskRoute | None:
        entry = self._routes.get((agent, task_id))
        if entry is None:
            return None
        owner, expires_at = entry
        if expires_at <= now:
            self._forget((agent, task_id))
            return None
        return TaskRoute(agent=agent, task_id=task_id, owner=owner)

    def _make_room(self, now: float) -> None:
        """O(1) while finished routes remain to forget; a full sweep for expired running ones
        at most once a second (so a store full of running tasks costs no scan per refusal)."""
        if len(self._routes) < self._max_tasks:
            return
        if self._finished:
            oldest, _ = self._finished.popitem(last=False)
            self._routes.pop(oldest, None)
            return
        if now >= self._next_forced_sweep:
            self._next_forced_sweep = now + _FORCED_SWEEP_INTERVAL_S
            self._next_sweep = now
            self._sweep(now)
        if len(self._routes) >= self._max_tasks:
            raise StoreFullError(
                detail=f"memory store holds {len(self._routes)} running tasks "
                "([store] memory_max_tasks)"
            )

    def _forget(self, key: tuple[str, str]) -> None:
        self._routes.pop(key, None)
        self._finished.pop(key, None)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _ROUTE_SWEEP_INTERVAL_S
        expired = [key for key, (_, expires_at) in self._routes.items() if expires_at <= now]
        for key in expired:
            self._forget(key)


class MemoryBackend(StoreBackend):
    """The in-process backend: always available, nothing to open or close."""

    def __init__(self, max_tasks: int = 100_000) -> None:
        trees = MemoryTaskTreeIndex()
        self._stores = Stores(
            registry=MemoryAgentRegistry(),
            credentials=MemoryCredentialStore(),
            task_routes=MemoryTaskRouteStore(trees, max_tasks),
            delegation_counters=MemoryDelegationCounters(),
            revocations=MemoryRevocations(),
            task_trees=trees,
            budgets=MemoryBudgetLedger(),
            rate_limiter=MemoryRateLimiter(),
            budget_limits=MemoryBudgetLimitStore(),
            approvals=MemoryApprovalStore(),
            kill_switch=MemoryKillSwitchStore(),
            mcp_servers=MemoryMcpServerStore(),
        )
        self._alerts = MemoryAlertState()
        self._traffic = MemoryRecentTraffic()

    def stores(self) -> Stores:
        return self._stores

    def alert_state(self) -> AlertState:
        return self._alerts

    def recent_traffic(self) -> RecentTraffic:
        return self._traffic

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

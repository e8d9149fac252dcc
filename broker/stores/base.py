"""Store interfaces: what the broker keeps, named by what it does.

Every backend (``memory`` for one process, ``redis`` shared by replicas) passes the same contract
suite in ``tests/contract``. A backend that cannot reach its storage raises
``StoreUnavailableError``; it never answers from a guess.
"""

from __future__ import annotations

import abc
from typing import Literal, NamedTuple

import msgspec

from broker.stores.alert_base import AlertState
from broker.stores.approvals_base import ApprovalStore
from broker.stores.budget_base import BudgetLedger, RateLimiter
from broker.stores.budget_limits import BudgetLimitStore
from broker.stores.kill_switch import KillSwitchStore
from broker.stores.mcp_servers import McpServerStore
from broker.stores.traffic_base import RecentTraffic
from broker.types import AgentRecord as AgentRecord  # noqa: PLC0414 - re-exported
from broker.types import AgentStatus as AgentStatus  # noqa: PLC0414 - re-exported

# Which delegation limit refused a child: in-flight children of the parent, all children the
# parent ever had, or all hops in the task tree.
DelegationLimit = Literal["concurrent", "total", "tree"]
RevocationStatus = Literal["ok", "token_revoked", "tree_killed"]
Revoked = Literal["token_revoked", "tree_killed"]


class TaskRoute(msgspec.Struct, frozen=True, kw_only=True):
    """Which agent runs a task and which authenticated caller created it."""

    agent: str
    task_id: str
    owner: str


class AgentRegistry(abc.ABC):
    """Registered agents by name."""

    @abc.abstractmethod
    async def create(self, record: AgentRecord) -> bool:
        """Store ``record`` unless its name is taken; False (nothing changed) if it is."""

    @abc.abstractmethod
    async def put(self, record: AgentRecord) -> None:
        """Store ``record``, replacing any agent of the same name."""

    @abc.abstractmethod
    async def get(self, name: str) -> AgentRecord | None:
        """The agent named ``name``, or None."""

    @abc.abstractmethod
    async def list(self) -> list[AgentRecord]:
        """Every registered agent, sorted by name."""

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """Remove the agent; True if it existed."""

    @abc.abstractmethod
    async def set_status(self, name: str, status: AgentStatus, now: float) -> AgentRecord | None:
        """Set the agent's status atomically; the updated record, or None if there is no agent."""


class CredentialStore(abc.ABC):
    """Broker credentials, held only as SHA-256 digests, mapped to the agent they authenticate."""

    @abc.abstractmethod
    async def replace(self, agent: str, digest: str) -> None:
        """Make ``digest`` the agent's only credential, revoking any earlier ones, atomically."""

    @abc.abstractmethod
    async def lookup(self, digest: str) -> str | None:
        """The agent that ``digest`` authenticates, or None."""

    @abc.abstractmethod
    async def revoke_agent(self, agent: str) -> int:
        """Revoke every credential of ``agent``; how many there were."""


class TaskRouteStore(abc.ABC):
    """Task id -> owning agent and creating caller, so task-scoped calls reach the right place."""

    @abc.abstractmethod
    async def claim(
        self, route: TaskRoute, ttl_s: int, tree: str | None = None, *, finished: bool = False
    ) -> bool:
        """Record ``route`` unless the task is already routed to a different owner.

        True if the route now holds (new, or the same owner again: its TTL is refreshed); False if
        another caller owns that task id at that agent, which is left unchanged. With ``tree``,
        a task that is claimed is also recorded in that task tree for ``ttl_s`` (as
        ``TaskTreeIndex.add``; one round trip on Redis), and one that is not is not recorded.
        ``finished``: the task had ended when its answer passed; a backend with a capacity
        forgets such routes first. Raises ``StoreFullError`` if there is no room.
        """

    @abc.abstractmethod
    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        """The route of ``task_id`` at ``agent``, or None if unknown or expired."""


class ChildSlot(msgspec.Struct, frozen=True, kw_only=True):
    """One in-flight child delegation, held from ``acquire_child`` until release or expiry."""

    id: str
    parent: str
    tree: str


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """``acquire_child`` took nothing: ``limit`` was already reached."""

    limit: DelegationLimit


class DelegationUsage(NamedTuple):
    """A parent's in-flight and total children and its tree's size, as the limits count them."""

    in_flight: int
    total_children: int
    tree_size: int


class DelegationCounters(abc.ABC):
    """Fan-out and tree-size counters that hold across every replica.

    ``parent`` is the delegation a caller works under (a token's jti), ``tree`` the task tree it
    belongs to; a parent always belongs to one tree. In-flight children are slots that expire on
    their own, so a broker that dies mid-request leaks nothing for longer than ``slot_ttl_s``.
    """

    @abc.abstractmethod
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
        """Atomically count one more child of ``parent`` in ``tree``, or refuse.

        Refused (nothing changes) if the parent's total children have reached ``max_total``
        ("total"), else if the tree's hops have reached ``max_tree`` ("tree"), else if its
        unexpired in-flight children have reached ``max_concurrent`` ("concurrent"): limits that
        waiting cannot lift are named first. A limit of 0 is unlimited. Otherwise the three counts
        grow by one and the slot is in flight for ``slot_ttl_s`` unless released earlier; the
        parent's and the tree's counters are forgotten ``ttl_s`` after the last acquire in them.
        Raises ValueError if a limit is negative or not ``0 < slot_ttl_s <= ttl_s``.
        """

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
        """``acquire_child`` for ``parent``, the jti of a token presented but not yet checked
        against ``revocations``: "tree_killed" or "token_revoked" (as ``Revocations.check``
        names them; nothing changes) if the check refuses, else what ``acquire_child`` returns.

        The check comes first, so a revoked token never counts. Here the two steps run one
        after the other; a backend that can do both in one round trip does.
        """
        status = await revocations.check(parent, tree)
        if status != "ok":
            return status
        return await self.acquire_child(
            parent,
            tree,
            max_concurrent=max_concurrent,
            max_total=max_total,
            max_tree=max_tree,
            slot_ttl_s=slot_ttl_s,
            ttl_s=ttl_s,
        )

    @abc.abstractmethod
    async def release_child(self, slot: ChildSlot) -> bool:
        """End ``slot``: the parent's in-flight count drops by one, its totals do not.

        True if the slot was in flight; False (nothing changes) if it was released already or
        had expired, so releasing twice never takes a count below what is in flight.
        """

    @abc.abstractmethod
    async def usage(self, parent: str, tree: str) -> DelegationUsage:
        """What the limits see now for ``parent`` in ``tree`` (zeros if nothing is known)."""


class Revocations(abc.ABC):
    """Revoked delegation tokens and killed task trees, each until a wall-clock deadline.

    ``until`` is a Unix time in seconds; an entry is gone once it passes (a token's entry need not
    outlive the token's expiry). Revoking again with a later ``until`` extends an entry, an
    earlier one never shortens it, and one already past records nothing.
    """

    @abc.abstractmethod
    async def revoke_token(self, jti: str, until: float) -> None:
        """Refuse the token ``jti`` until ``until``."""

    @abc.abstractmethod
    async def is_token_revoked(self, jti: str) -> bool:
        """True while ``jti`` is revoked."""

    @abc.abstractmethod
    async def kill_tree(self, tree: str, until: float) -> bool:
        """Refuse all delegation in ``tree`` until ``until``; True if it was not killed before."""

    @abc.abstractmethod
    async def is_tree_killed(self, tree: str) -> bool:
        """True while ``tree`` is killed."""

    @abc.abstractmethod
    async def check(self, jti: str, tree: str) -> RevocationStatus:
        """Both checks in one round trip, for the hot path.

        "tree_killed" wins over "token_revoked": a killed tree is the wider stop, and telling
        the caller so keeps it from retrying with another token of the same tree.
        """


class TaskTreeIndex(abc.ABC):
    """The tasks in flight in each task tree, so killing a tree can cancel every one of them."""

    @abc.abstractmethod
    async def add(self, tree: str, agent: str, task_id: str, ttl_s: int) -> None:
        """Record ``task_id`` at ``agent`` in ``tree`` for ``ttl_s`` from now.

        Adding it again resets its expiry. Raises ValueError if ``ttl_s`` is not positive.
        """

    @abc.abstractmethod
    async def members(self, tree: str) -> list[tuple[str, str]]:
        """The unexpired ``(agent, task_id)`` pairs of ``tree``, sorted."""

    @abc.abstractmethod
    async def remove(self, tree: str, agent: str, task_id: str) -> None:
        """Forget ``task_id`` at ``agent`` in ``tree``; nothing happens if it is not there."""


def check_acquire_arguments(
    max_concurrent: int, max_total: int, max_tree: int, slot_ttl_s: int, ttl_s: int
) -> None:
    """Raise ValueError unless the arguments of ``acquire_child`` are usable (every backend)."""
    if min(max_concurrent, max_total, max_tree) < 0:
        raise ValueError("delegation limits must be 0 (unlimited) or positive")
    if not 0 < slot_ttl_s <= ttl_s:
        raise ValueError("need 0 < slot_ttl_s <= ttl_s")


class Stores(msgspec.Struct, frozen=True, kw_only=True):
    """The store bundle the broker runs on."""

    registry: AgentRegistry
    credentials: CredentialStore
    task_routes: TaskRouteStore
    delegation_counters: DelegationCounters
    revocations: Revocations
    task_trees: TaskTreeIndex
    budgets: BudgetLedger
    rate_limiter: RateLimiter
    budget_limits: BudgetLimitStore
    kill_switch: KillSwitchStore
    approvals: ApprovalStore
    mcp_servers: McpServerStore  # MCP servers registered at run time


class StoreBackend(abc.ABC):
    """Opens and closes one backend's connections."""

    @abc.abstractmethod
    def stores(self) -> Stores: ...

    @abc.abstractmethod
    def alert_state(self) -> AlertState:
        """The state anomaly alerts are judged on (``broker.alerts``), on this backend."""

    @abc.abstractmethod
    def recent_traffic(self) -> RecentTraffic:
        """The latest requests of every process on this backend (the console's live page)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailableError if the backend cannot serve requests now."""

    async def start_checks(self) -> None:
        """At start: raise ``StoreTopologyError`` if the storage is not what the settings name
        or could lose the broker's state on its own (Redis eviction). Unreachable is no error
        here (requests are refused until it answers)."""
        return

    @abc.abstractmethod
    async def close(self) -> None: ...

"""Store interfaces: what the broker keeps, named by what it does.

Every backend (``memory`` for one process, ``redis`` shared by replicas) passes the same contract
suite in ``tests/contract``. A backend that cannot reach its storage raises
``StoreUnavailableError``; it never answers from a guess.
"""

from __future__ import annotations

import abc
from typing import Literal

import msgspec

AgentStatus = Literal["active", "suspended"]


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A registered agent. ``card_json`` is the validated card, normalised to A2A 1.0."""

    name: str
    card_json: str
    status: AgentStatus = "active"
    # Upstream endpoints taken from the card, one per binding the broker can relay (may be "").
    jsonrpc_url: str = ""
    rest_url: str = ""
    source: Literal["api", "declarative"] = "api"
    card_url: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


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
    async def claim(self, route: TaskRoute, ttl_s: int) -> bool:
        """Record ``route`` unless the task is already routed to a different owner.

        True if the route now holds (new, or the same owner again: its TTL is refreshed); False if
        another caller owns that task id at that agent, which is left unchanged.
        """

    @abc.abstractmethod
    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        """The route of ``task_id`` at ``agent``, or None if unknown or expired."""


class Stores(msgspec.Struct, frozen=True, kw_only=True):
    """The store bundle the broker runs on."""

    registry: AgentRegistry
    credentials: CredentialStore
    task_routes: TaskRouteStore


class StoreBackend(abc.ABC):
    """Opens and closes one backend's connections."""

    @abc.abstractmethod
    def stores(self) -> Stores: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailableError if the backend cannot serve requests now."""

    @abc.abstractmethod
    async def close(self) -> None: ...

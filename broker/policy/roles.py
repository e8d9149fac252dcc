"""The roles (teams) an agent holds in the current policy, for charging team budgets.

Read from the policy's ``g`` lines, transitively (roles nest), recomputed when the policy
version changes. No policy: no roles.
"""

from __future__ import annotations

from broker.policy.engine import PolicyEngine
from broker.policy.rules import parse_policy


class AgentRoles:
    def __init__(self, engine: PolicyEngine | None) -> None:
        self._engine = engine
        self._version = ""
        self._parents: dict[str, tuple[str, ...]] = {}
        self._cache: dict[str, tuple[str, ...]] = {}

    def of(self, agent: str) -> tuple[str, ...]:
        """The roles ("role:x") ``agent`` holds, directly or through roles, nearest first."""
        if self._engine is None:
            return ()
        snapshot = self._engine.snapshot
        if snapshot.version != self._version:
            self._reindex(snapshot.text, snapshot.source, snapshot.version)
        found = self._cache.get(agent)
        if found is None:
            found = self._climb(agent)
            self._cache[agent] = found
        return found

    def _reindex(self, text: str, source: str, version: str) -> None:
        # The snapshot's text was validated when it was loaded, so this does not raise.
        parents: dict[str, list[str]] = {}
        for rule in parse_policy(text, source).of_kind("g"):
            parents.setdefault(rule.fields[0], []).append(rule.fields[1])
        self._parents = {child: tuple(found) for child, found in parents.items()}
        self._cache = {}
        self._version = version

    def _climb(self, agent: str) -> tuple[str, ...]:
        seen: list[str] = []
        pending = list(self._parents.get(agent, ()))
        while pending:  # the hierarchy is acyclic and bounded (validated with the policy)
            role = pending.pop(0)
            if role not in seen:
                seen.append(role)
                pending.extend(self._parents.get(role, ()))
        return tuple(seen)

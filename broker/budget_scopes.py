"""Which budgets a call is charged to, from the [budgets] settings.

A call is charged to its caller (the agent's own limits, else the "*" default), each of the
caller's teams (policy roles), the root task tree when it is part of one, and the caller→target
edge. A scope with no configured limits is left out, so an unconfigured broker meters nothing
and pays no store round trip for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.budgets import Limit, Scope
from broker.settings import BudgetLimitSettings, BudgetSettings

DEFAULT_AGENT = "*"


def _limits(specs: Sequence[BudgetLimitSettings]) -> tuple[Limit, ...]:
    return tuple(Limit(metric=s.metric, window=s.window, limit=s.limit) for s in specs)


class ConfiguredScopes:
    def __init__(self, budgets: BudgetSettings) -> None:
        self._budgets = budgets
        self._default_agent = _limits(budgets.agents.get(DEFAULT_AGENT, ()))
        self._tree = _limits(budgets.trees)

    def for_call(
        self, agent: str, teams: Sequence[str], tree: str | None, target: str
    ) -> tuple[Scope, ...]:
        found = [self._agent(agent), *(self._team(t) for t in teams), self._edge(agent, target)]
        if tree and self._tree:
            found.append(Scope(kind="tree", name=tree, limits=self._tree))
        return tuple(s for s in found if s is not None)

    async def for_llm_call(
        self, agent: str, teams: tuple[str, ...], tree: str | None, target: str
    ) -> tuple[Scope, ...]:
        return self.for_call(agent, teams, tree, target)

    def for_status(self, agent: str, teams: Sequence[str], tree: str) -> tuple[Scope, ...]:
        """The configured scopes to report: one agent's (with its teams and edges), one tree's,
        or, with neither, every agent named in the config."""
        found: list[Scope | None] = []
        if agent:
            found += [self._agent(agent), *(self._team(t) for t in teams)]
            found += [
                self._edge(*e.split(">", 1))
                for e in self._budgets.edges
                if e.startswith(f"{agent}>")
            ]
        if tree and self._tree:
            found.append(Scope(kind="tree", name=tree, limits=self._tree))
        if not agent and not tree:
            found += [self._agent(a) for a in self._budgets.agents if a != DEFAULT_AGENT]
            found += [self._team(t) for t in self._budgets.teams]
        return tuple(s for s in found if s is not None)

    def _agent(self, agent: str) -> Scope | None:
        own = self._budgets.agents.get(agent)
        limits = _limits(own) if own is not None else self._default_agent
        return Scope(kind="agent", name=agent, limits=limits) if limits else None

    def _team(self, team: str) -> Scope | None:
        limits = _limits(self._budgets.teams.get(team, ()))
        return Scope(kind="team", name=team, limits=limits) if limits else None

    def _edge(self, caller: str, target: str) -> Scope | None:
        limits = _limits(self._budgets.edges.get(f"{caller}>{target}", ()))
        return Scope(kind="edge", name=f"{caller}>{target}", limits=limits) if limits else None

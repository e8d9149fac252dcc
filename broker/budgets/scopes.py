"""Which budgets a call is charged to: the live limits an operator set, else the [budgets] config.

A call is charged to its caller (the agent's own limits, else the "*" default), each of the
caller's teams (policy roles), the root task tree when it is part of one, and the caller→target
edge. A scope with no limits is left out, so an unconfigured broker meters nothing and pays no
ledger round trip for it.

Live overrides (``broker.stores.budget_limits``) win over the config, scope key by scope key: an
override replaces that scope's configured limits entirely (an empty one unmeters it), and
deleting it brings the config back. For an agent the order is: its own override, its own config
entry, the ``agent:*`` override, the ``"*"`` config default. Trees: ``tree:*``, then the config.

The overrides live in memory here, so the hot path reads no store for them: ``refresh()`` reloads
them when they are older than ``REFRESH_S`` (one small read when nothing changed, shared by all
concurrent callers), and ``set_live``/``unset_live`` write through and reload at once, so a change
takes effect immediately on the replica that made it and within ``REFRESH_S`` on the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Literal, NamedTuple

from broker.budgets.model import Limit, Scope, ScopeKind
from broker.settings import BudgetLimitSettings, BudgetSettings
from broker.stores.budget_limits import BudgetLimitStore, check_override

DEFAULT_AGENT = "*"
EVERY_TREE = "tree:*"
# How old the live overrides may be when a call is charged (seconds).
REFRESH_S: Final = 1.0
_FIXED_MAX: Final = 4096  # (agent, teams, target) triples whose scopes are kept

Source = Literal["config", "live"]
_Limits = tuple[Limit, ...]


class ScopeSource(NamedTuple):
    """A scope with the limits that bind it now, and where they come from."""

    scope: Scope
    source: Source


def _limits(specs: Sequence[BudgetLimitSettings]) -> _Limits:
    return tuple(Limit(metric=s.metric, window=s.window, limit=s.limit) for s in specs)


def _config_limits(section: Mapping[str, Sequence[BudgetLimitSettings]]) -> dict[str, _Limits]:
    return {name: _limits(specs) for name, specs in section.items()}


class ConfiguredScopes:
    """The scopes of a call, from the live overrides and the config (see the module doc).

    Without a live store (``live=None`` and no ``use_live``) only the config counts.
    """

    def __init__(
        self,
        budgets: BudgetSettings,
        live: BudgetLimitStore | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agents = _config_limits(budgets.agents)
        self._teams = _config_limits(budgets.teams)
        self._edges = _config_limits(budgets.edges)
        self._tree = _limits(budgets.trees)
        self._tools = _config_limits(budgets.tools)
        self._clock = clock
        self._store: BudgetLimitStore | None = None
        self._live: dict[str, _Limits] = {}
        self._version: int | None = None
        self._fresh_until = float("-inf")
        self._started = self._applied = 0  # reloads started / the newest one applied
        self._inflight: asyncio.Future[None] | None = None
        # ``for_call``'s agent, team and edge scopes by (agent, teams, target), for the reload
        # they were resolved after (``_applied``): the same few callers and targets every call.
        self._fixed: dict[tuple[str, tuple[str, ...], str], tuple[Scope, ...]] = {}
        self._fixed_for = self._applied
        if live is not None:
            self.use_live(live)

    def use_live(self, live: BudgetLimitStore) -> None:
        """Consult ``live`` from now on (loaded on the next ``refresh``)."""
        self._store = live
        self._fresh_until = float("-inf")

    # --- the live overrides ---------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the live overrides if they are older than ``REFRESH_S``; else return at once.

        Concurrent callers share one reload. Raises StoreUnavailableError if the store cannot be
        read (fail closed: limits that may have changed are not guessed); the next call retries.
        """
        if self._store is None or self._clock() < self._fresh_until:
            return
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._reload())
            self._inflight.add_done_callback(self._reload_done)
        await asyncio.shield(self._inflight)

    def _reload_done(self, done: asyncio.Future[None]) -> None:
        self._inflight = None
        if not done.cancelled():
            done.exception()  # retrieved here; the callers awaiting it got it already

    async def _reload(self) -> None:
        """Read the overrides (only the version if it did not change); the newest reload wins."""
        assert self._store is not None  # noqa: S101 - callers check
        self._started += 1
        mine = self._started
        version = await self._store.version()
        live = self._live if version == self._version else await self._store.all()
        if mine > self._applied:
            self._applied, self._version, self._live = mine, version, live
            self._fresh_until = self._clock() + REFRESH_S

    async def set_live(self, scope_key: str, limits: _Limits) -> None:
        """Override the limits of ``scope_key`` on every replica; in effect here on return.

        Raises ValueError (nothing changes) unless ``check_override`` accepts it, and
        StoreUnavailableError if the store fails.
        """
        check_override(scope_key, limits)
        await self._live_store().put(scope_key, limits)
        await self._reload()

    async def unset_live(self, scope_key: str) -> bool:
        """Drop the override of ``scope_key`` (the config applies again); True if there was one."""
        removed = await self._live_store().delete(scope_key)
        await self._reload()
        return removed

    def live_overrides(self) -> dict[str, _Limits]:
        """The overrides as last loaded, by scope key (call ``refresh`` first for fresh ones)."""
        return dict(self._live)

    def _live_store(self) -> BudgetLimitStore:
        if self._store is None:
            raise RuntimeError("no live budget limit store is configured")
        return self._store

    # --- the scopes of a call ---------------------------------------------------------------

    def for_call(
        self,
        agent: str,
        teams: Sequence[str],
        tree: str | None,
        target: str,
        *,
        tool: str | None = None,
    ) -> tuple[Scope, ...]:
        """The scopes one call is charged to, with the limits known now (no store read).
        ``tool``: an MCP tool call's ``server.tool``, charged to that tool's own budget too."""
        found = self._fixed_scopes(agent, tuple(teams), target)
        if tree and (tree_scope := self._tree_of(tree)) is not None:
            found += (tree_scope.scope,)
        if tool and (tool_scope := self._tool(tool)) is not None:
            found += (tool_scope.scope,)
        return found

    def _fixed_scopes(self, agent: str, teams: tuple[str, ...], target: str) -> tuple[Scope, ...]:
        """The agent's, its teams' and the edge's scopes (in that order), resolved once per
        reload of the live overrides."""
        if self._fixed_for != self._applied:
            self._fixed.clear()
            self._fixed_for = self._applied
        key = (agent, teams, target)
        found = self._fixed.get(key)
        if found is None:
            sources = [self._agent(agent), *(self._team(t) for t in teams),
                       self._edge(agent, target)]  # fmt: skip
            found = tuple(s.scope for s in sources if s is not None)
            if len(self._fixed) >= _FIXED_MAX:  # callers and targets come from outside
                self._fixed.clear()
            self._fixed[key] = found
        return found

    async def for_llm_call(
        self, agent: str, teams: tuple[str, ...], tree: str | None, target: str
    ) -> tuple[Scope, ...]:
        """``for_call`` after a ``refresh`` (may raise StoreUnavailableError)."""
        await self.refresh()
        return self.for_call(agent, teams, tree, target)

    def for_status(self, agent: str, teams: Sequence[str], tree: str) -> tuple[Scope, ...]:
        """The scopes ``described`` reports, without their sources."""
        return tuple(s.scope for s in self.described(agent, teams, tree))

    def described(self, agent: str, teams: Sequence[str], tree: str) -> tuple[ScopeSource, ...]:
        """The scopes to report: one agent's (with its teams and edges), one tree's, or, with
        neither, every agent, team and edge named in the config or by a live override."""
        found: list[ScopeSource | None] = []
        if agent:
            found += [self._agent(agent), *(self._team(t) for t in teams)]
            found += [self._edge(*e.split(">", 1)) for e in self._edge_names(f"{agent}>")]
        if tree:
            found.append(self._tree_of(tree))
        if not agent and not tree:
            found += [self._agent(a) for a in self._names("agent", self._agents)]
            found += [self._team(t) for t in self._names("team", self._teams)]
            found += [self._edge(*e.split(">", 1)) for e in self._edge_names("")]
        return tuple(s for s in found if s is not None)

    def _names(self, kind: ScopeKind, configured: Iterable[str]) -> list[str]:
        """Names of ``kind`` in the config or the overrides, wildcards left out, sorted."""
        live = (k.split(":", 1)[1] for k in self._live if k.startswith(f"{kind}:"))
        return sorted({*configured, *live} - {DEFAULT_AGENT})

    def _edge_names(self, prefix: str) -> list[str]:
        return [e for e in self._names("edge", self._edges) if e.startswith(prefix) and ">" in e]

    def _agent(self, agent: str) -> ScopeSource | None:
        limits = self._resolve(f"agent:{agent}", self._agents.get(agent))
        if limits is None:
            limits = self._resolve(f"agent:{DEFAULT_AGENT}", self._agents.get(DEFAULT_AGENT))
        return _scope("agent", agent, limits)

    def _team(self, team: str) -> ScopeSource | None:
        return _scope("team", team, self._resolve(f"team:{team}", self._teams.get(team)))

    def _edge(self, caller: str, target: str) -> ScopeSource | None:
        name = f"{caller}>{target}"
        return _scope("edge", name, self._resolve(f"edge:{name}", self._edges.get(name)))

    def _tool(self, tool: str) -> ScopeSource | None:
        """An MCP tool's budget (``[budgets.tools]``): ``server.tool``, else ``server.*``."""
        server = tool.partition(".")[0]
        limits = self._tools.get(tool)
        if limits is None:
            limits = self._tools.get(f"{server}.*")
        return _scope("tool", tool, None if limits is None else (limits, "config"))

    def _tree_of(self, tree: str) -> ScopeSource | None:
        return _scope("tree", tree, self._resolve(EVERY_TREE, self._tree or None))

    def _resolve(self, key: str, configured: _Limits | None) -> tuple[_Limits, Source] | None:
        """The live override of ``key``, else ``configured``, else None (not set anywhere)."""
        live = self._live.get(key)
        if live is not None:
            return live, "live"
        return None if configured is None else (configured, "config")


def _scope(
    kind: ScopeKind, name: str, resolved: tuple[_Limits, Source] | None
) -> ScopeSource | None:
    if resolved is None or not resolved[0]:
        return None
    return ScopeSource(Scope(kind=kind, name=name, limits=resolved[0]), resolved[1])

"""Live budget limits: overrides of the configured limits, set by an operator while the broker runs.

An override replaces every configured limit of one scope key; deleting it brings the config back.
Scope keys are those of ``broker.budgets.model.Scope.key()`` plus two wildcards:

- ``agent:<name>``, or ``agent:*``: every agent without limits of its own (config or live);
- ``team:<name>`` (a role or tenant, e.g. ``team:role:user``);
- ``tree:*``: every root task tree (trees are not limited one by one);
- ``edge:<caller>><target>`` (the target may be ``model:<name>``).

An empty tuple of limits is an override too: that scope is not metered while it stands.

Every replica reads the overrides into memory and refreshes them about once a second
(``broker.budgets.scopes``); ``version()`` lets it do so with one cheap read when nothing changed.

Backends: ``MemoryBudgetLimitStore`` below, ``redis_budget_limits.RedisBudgetLimitStore``.
"""

from __future__ import annotations

import abc
from typing import Final

from broker.budgets.model import Limit, Scope, check_scopes

_MAX_NAME: Final = 512
_WILDCARD: Final = "*"
_KINDS: Final = ("agent", "team", "tree", "edge")


def check_override(scope_key: str, limits: tuple[Limit, ...]) -> None:
    """Raise ValueError, with a message fit for an operator, unless ``scope_key`` names a scope
    that may be overridden and ``limits`` are usable (each metric/window once, 0..2**53-1)."""
    kind, sep, name = scope_key.partition(":")
    if not sep or kind not in _KINDS:
        raise ValueError(
            f"unknown budget scope {scope_key!r}: expected agent:<name>, agent:*, "
            "team:<name>, tree:* or edge:<caller>><target>"
        )
    if not name or len(name) > _MAX_NAME or name != name.strip():
        raise ValueError(f"budget scope {scope_key!r} needs a name (1..{_MAX_NAME} characters)")
    if kind == "tree" and name != _WILDCARD:
        raise ValueError("trees are limited all alike: use the scope tree:*")
    if kind == "team" and name == _WILDCARD:
        raise ValueError("there is no default team budget: name the team (team:<name>)")
    if kind == "edge" and not all(name.partition(">")[::2]):
        raise ValueError(f"budget scope {scope_key!r}: an edge is edge:<caller>><target>")
    check_scopes([Scope(kind=kind, name=name, limits=limits)])  # type: ignore[arg-type]


class BudgetLimitStore(abc.ABC):
    """Live limit overrides by scope key, shared by every replica of one store."""

    @abc.abstractmethod
    async def put(self, scope_key: str, limits: tuple[Limit, ...]) -> None:
        """Make ``limits`` the override of ``scope_key``, replacing any earlier one.

        Raises ValueError (nothing changes) unless ``check_override`` accepts them.
        """

    @abc.abstractmethod
    async def delete(self, scope_key: str) -> bool:
        """Drop the override of ``scope_key``; True if there was one."""

    @abc.abstractmethod
    async def all(self) -> dict[str, tuple[Limit, ...]]:
        """Every override, by scope key (sorted)."""

    @abc.abstractmethod
    async def version(self) -> int:
        """A number that changes whenever the overrides do (read it *before* ``all``).

        Equal numbers read at two times mean ``all`` would answer the same; it may also change
        when nothing did (a ``delete`` of nothing), and is not ordered: compare for equality.
        """


class MemoryBudgetLimitStore(BudgetLimitStore):
    """Overrides in a dict of this process. Same contract as ``BudgetLimitStore``."""

    def __init__(self) -> None:
        self._limits: dict[str, tuple[Limit, ...]] = {}
        self._version = 0

    async def put(self, scope_key: str, limits: tuple[Limit, ...]) -> None:
        check_override(scope_key, limits)
        self._limits[scope_key] = tuple(limits)
        self._version += 1

    async def delete(self, scope_key: str) -> bool:
        self._version += 1
        return self._limits.pop(scope_key, None) is not None

    async def all(self) -> dict[str, tuple[Limit, ...]]:
        return dict(sorted(self._limits.items()))

    async def version(self) -> int:
        return self._version

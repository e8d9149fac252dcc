"""Budgets as data: who a limit applies to, what it counts, over which window. No I/O.

A ``Scope`` is one account that spend is charged to (an agent, a team or role, a root task tree,
a caller -> target edge) with the ``Limit``s that bind it. Each limit counts one ``Metric`` over
one ``Window``; windows are aligned to UTC (the calendar month for "month"), "lifetime" never
rolls over. The ledgers in ``broker/stores`` keep the counters; this module only says what they
mean and checks the arguments every backend must refuse alike.
"""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Sequence
from typing import Final, Literal

import msgspec

Metric = Literal["calls", "tokens_in", "tokens_out", "cost_micro"]  # cost in micro-units
Window = Literal["minute", "hour", "day", "month", "lifetime"]
ScopeKind = Literal["agent", "team", "tree", "edge", "tool"]

METRICS: Final[tuple[Metric, ...]] = ("calls", "tokens_in", "tokens_out", "cost_micro")
WINDOWS: Final[tuple[Window, ...]] = ("minute", "hour", "day", "month", "lifetime")
# Counters and amounts stay below 2**53, so the Redis scripts (Lua numbers are doubles) count
# them exactly.
MAX_AMOUNT: Final = 2**53 - 1
_FIXED_SECONDS: Final[dict[Window, int]] = {"minute": 60, "hour": 3600, "day": 86400}


class Limit(msgspec.Struct, frozen=True):
    """At most ``limit`` of ``metric`` per ``window``. A limit of 0 allows nothing."""

    metric: Metric
    window: Window
    limit: int


class Scope(msgspec.Struct, frozen=True):
    """An account that spend is charged to, with the limits that bind it.

    ``name`` is the agent, the team or role ("role:user"), the root task id, the edge
    ("planner>researcher") or the MCP tool ("github.create_issue"). ``key()`` names the scope
    in counters, refusals and status.
    """

    kind: ScopeKind
    name: str
    limits: tuple[Limit, ...]

    def key(self) -> str:
        """``<kind>:<name>``, e.g. "agent:planner" or "edge:planner>researcher"."""
        return f"{self.kind}:{self.name}"


class Usage(msgspec.Struct, frozen=True):
    """An amount of each metric: what a call may spend, or did spend."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_micro: int = 0

    def of(self, metric: Metric) -> int:
        """The amount of ``metric``."""
        value: int = getattr(self, metric)
        return value

    def amounts(self) -> tuple[int, int, int, int]:
        """Every amount, in the order of ``METRICS`` (one attribute read each, not ``of``)."""
        return self.calls, self.tokens_in, self.tokens_out, self.cost_micro



# What an agent-to-agent send or an MCP tool call is charged: one call, nothing else.
ONE_CALL = Usage(calls=1)

def window_start(window: Window, now: float) -> int:
    """Epoch seconds at which the ``window`` holding ``now`` began (UTC); 0 for "lifetime"."""
    if window == "lifetime":
        return 0
    if window == "month":
        day = datetime.datetime.fromtimestamp(now, datetime.UTC)
        return calendar.timegm((day.year, day.month, 1, 0, 0, 0))
    size = _FIXED_SECONDS[window]
    return int(now // size) * size


def window_end(window: Window, start: int) -> int | None:
    """Epoch seconds at which the window that began at ``start`` ends; None for "lifetime"."""
    if window == "lifetime":
        return None
    if window == "month":
        day = datetime.datetime.fromtimestamp(start, datetime.UTC)
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0))
    return start + _FIXED_SECONDS[window]


# Tuples of scopes that passed ``check_scopes``, by id (decision 0086).
_CHECKED: dict[int, tuple[Scope, ...]] = {}
_CHECKED_MAX = 4096


def check_scopes(scopes: Sequence[Scope]) -> None:
    """Raise ValueError unless every scope is distinct and its limits are usable.

    A scope may appear once per call, and each (metric, window) once per scope: a counter
    checked twice in one reservation could let it through twice.
    """
    if isinstance(scopes, tuple) and _CHECKED.get(id(scopes)) is scopes:
        return  # this very tuple passed before: immutable, so it passes again
    if len({scope.key() for scope in scopes}) != len(scopes):
        raise ValueError("each budget scope may appear once")
    for scope in scopes:
        pairs = {(limit.metric, limit.window) for limit in scope.limits}
        if len(pairs) != len(scope.limits):
            raise ValueError(f"scope {scope.key()} limits a metric twice in one window")
        for limit in scope.limits:
            if limit.metric not in METRICS or limit.window not in WINDOWS:
                raise ValueError(f"scope {scope.key()} has an unknown metric or window")
            _check_amount(limit.limit, "limit")
    if isinstance(scopes, tuple) and all(type(scope.limits) is tuple for scope in scopes):
        # The scopes of a call come from ``ConfiguredScopes``' cache, the same tuple per caller
        # until a reload: checked once per tuple, not per reserve. The tuple is held beside
        # its id, so the id is not reused while the entry lives.
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[id(scopes)] = scopes


def check_usage(usage: Usage) -> None:
    """Raise ValueError unless every amount of ``usage`` is an int in ``0..MAX_AMOUNT``."""
    calls, tokens_in, tokens_out, cost = amounts = usage.amounts()
    # Twice per metered call (reserve, settle): the usual answer in one expression, no call
    # per metric; anything else goes the long way, which names the first amount at fault.
    if (
        isinstance(calls, int)
        and isinstance(tokens_in, int)
        and isinstance(tokens_out, int)
        and isinstance(cost, int)
        and 0 <= calls <= MAX_AMOUNT
        and 0 <= tokens_in <= MAX_AMOUNT
        and 0 <= tokens_out <= MAX_AMOUNT
        and 0 <= cost <= MAX_AMOUNT
    ):
        return
    for metric, value in zip(METRICS, amounts, strict=True):
        _check_amount(value, metric)


def _check_amount(value: int, name: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be an integer in 0..2**53-1")

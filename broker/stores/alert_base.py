"""The state anomaly alerts are judged on, shared by every replica (``broker.alerts``).

Each operation reads and writes in one atomic step (one Lua script in Redis), so replicas that
see calls on the same edge at once agree on its history and an alert fires exactly once. All
state expires: an edge, caller or agent not seen for ``ttl_s`` is forgotten.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

DetailValue = str | int  # as in audit records: no floats


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert as the console lists it. ``at`` and ``acked_at``: Unix time (0: not acked)."""

    id: str
    rule: str
    subject: str
    at: float
    summary: str
    detail: dict[str, DetailValue] = msgspec.field(default_factory=dict)
    acked_at: float = 0.0
    acked_by: str = ""


class EdgeRules(NamedTuple):
    """How an edge's calls are judged (``[alerts]``); a factor or warm-up of 0: rule off."""

    bucket_s: int
    smoothing: float
    rate_factor: float
    rate_min_calls: int
    rate_warmup_buckets: int
    depth_warmup_calls: int
    ttl_s: int


class EdgeFindings(NamedTuple):
    """What one observation of an edge found: ``first``: its first call ever (within the
    TTL); ``rate``: the calls in the current bucket when they just went far above the
    baseline (0 otherwise), ``baseline`` that average; ``deeper``: a chain depth above the
    ``usual`` deepest (0 otherwise)."""

    first: bool
    rate: int
    baseline: float
    deeper: int
    usual: int


class AlertState(abc.ABC):
    @abc.abstractmethod
    async def observe_edge(
        self, subject: str, calls: int, depth: int, rules: EdgeRules
    ) -> EdgeFindings:
        """Count ``calls`` on ``subject`` (an edge ``caller>target`` or ``model:NAME``), the
        deepest of them ``depth`` hops, and say what they reveal against its history."""

    @abc.abstractmethod
    async def count_burst(self, subject: str, amount: int, window_s: int, threshold: int) -> int:
        """Add ``amount`` to ``subject``'s count in its current window (which starts with
        its first count and lasts ``window_s``): the new count if it just reached
        ``threshold``, else 0."""

    @abc.abstractmethod
    async def once(self, subject: str, ttl_s: int) -> bool:
        """True the first time ``subject`` is named within ``ttl_s``, False after."""

    @abc.abstractmethod
    async def new_card_keys(self, agent: str, kids: Sequence[str], ttl_s: int) -> list[str]:
        """The key ids among ``kids`` that ``agent``'s earlier cards did not carry ([] for an
        agent's first card, which sets what is usual)."""

    @abc.abstractmethod
    async def add(self, alert: Alert, keep: int, ttl_s: int) -> None:
        """Keep ``alert``, and only the newest ``keep`` alerts."""

    @abc.abstractmethod
    async def recent(self, limit: int) -> list[Alert]:
        """The newest ``limit`` alerts, newest first."""

    @abc.abstractmethod
    async def acknowledge(self, alert_id: str, by: str, at: float) -> bool:
        """Mark an alert acknowledged; False if it is unknown or was acknowledged already."""

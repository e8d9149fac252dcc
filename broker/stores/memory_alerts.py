"""Alert state in this process's memory (``broker.stores.alert_base``), for one process.

The same arithmetic as the Redis scripts (``alert_*.lua``); every entry expires ``ttl_s``
after it was last written, and expired entries are dropped as new ones come, so the state is
bounded by what was seen lately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from broker.stores.alert_base import Alert, AlertState, EdgeFindings, EdgeRules

_PRUNE_EVERY = 1024


class _Expiring:
    """A dict whose entries expire; pruned every ``_PRUNE_EVERY`` writes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, Any]] = {}
        self._writes = 0

    def get(self, key: str) -> Any:
        found = self._entries.get(key)
        if found is None or found[0] <= self._clock():
            return None
        return found[1]

    def put(self, key: str, value: Any, ttl_s: float) -> None:
        self._entries[key] = (self._clock() + ttl_s, value)
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            now = self._clock()
            for stale in [k for k, (until, _) in self._entries.items() if until <= now]:
                del self._entries[stale]


class MemoryAlertState(AlertState):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._edges = _Expiring(clock)
        self._bursts = _Expiring(clock)
        self._once = _Expiring(clock)
        self._card_keys = _Expiring(clock)
        self._alerts: dict[str, Alert] = {}

    async def observe_edge(
        self, subject: str, calls: int, depth: int, rules: EdgeRules
    ) -> EdgeFindings:
        bucket = int(self._clock() // rules.bucket_s)
        state = self._edges.get(subject)
        first = state is None
        b, c, avg, n, fb, dmax, dn = state or (bucket, 0, 0.0, 0, -1, 0, 0)
        if bucket > b:
            avg = (1 - rules.smoothing) * avg + rules.smoothing * c
            gap = min(bucket - b - 1, 1000)
            if gap > 0:
                avg *= (1 - rules.smoothing) ** gap
            n, c, b = n + 1 + gap, 0, bucket
        c += calls
        rate = 0
        factor = rules.rate_factor
        warm = n >= rules.rate_warmup_buckets and c >= rules.rate_min_calls
        if factor > 0 and warm and c > factor * avg and fb != b:
            rate, fb = c, b
        warmup = rules.depth_warmup_calls
        deeper = depth if warmup > 0 and dn >= warmup and depth > dmax else 0
        usual = dmax
        self._edges.put(subject, (b, c, avg, n, fb, max(dmax, depth), dn + calls), rules.ttl_s)
        return EdgeFindings(first, rate, avg, deeper, usual)

    async def count_burst(self, subject: str, amount: int, window_s: int, threshold: int) -> int:
        now = self._clock()
        found = self._bursts.get(subject)
        count, until = found if found is not None else (0, now + window_s)
        after = count + amount
        self._bursts.put(subject, (after, until), until - now)
        return after if count < threshold <= after else 0

    async def once(self, subject: str, ttl_s: int) -> bool:
        if self._once.get(subject) is not None:
            return False
        self._once.put(subject, True, ttl_s)
        return True

    async def new_card_keys(self, agent: str, kids: Sequence[str], ttl_s: int) -> list[str]:
        known: set[str] | None = self._card_keys.get(agent)
        new = [] if known is None else [kid for kid in dict.fromkeys(kids) if kid not in known]
        self._card_keys.put(agent, {*(known or ()), *kids}, ttl_s)
        return new

    async def add(self, alert: Alert, keep: int, ttl_s: int) -> None:
        self._alerts[alert.id] = alert
        for old in sorted(self._alerts.values(), key=lambda a: a.at)[: len(self._alerts) - keep]:
            del self._alerts[old.id]

    async def recent(self, limit: int) -> list[Alert]:
        return sorted(self._alerts.values(), key=lambda a: a.at, reverse=True)[:limit]

    async def acknowledge(self, alert_id: str, by: str, at: float) -> bool:
        alert = self._alerts.get(alert_id)
        if alert is None or alert.acked_at:
            return False
        self._alerts[alert_id] = msgspec.structs.replace(alert, acked_at=at, acked_by=by)
        return True

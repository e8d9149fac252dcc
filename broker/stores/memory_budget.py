"""The embedded backend's budget ledger and rate limiter: dicts in one process.

As in ``memory.py``, no method awaits between its read and its write, so on one event loop each
is atomic exactly as the Redis scripts are, and gives the same answers: the same windows (UTC,
by the wall clock), the same expiry of reservations and counters, the same GCRA arithmetic in
whole microseconds. The clock can be injected, so tests can roll windows over without waiting.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from broker.budgets.model import (
    METRICS,
    Limit,
    Metric,
    Scope,
    Usage,
    Window,
    check_usage,
    window_end,
)
from broker.budgets.model import window_start as start_of
from broker.ids import new_id
from broker.stores.budget_base import (
    COUNTER_GRACE_S,
    MICROS,
    BudgetLedger,
    BudgetRefusal,
    BudgetStatus,
    RateLimiter,
    Reservation,
    check_reserve_arguments,
    gcra_parameters,
)

# Expired counters and rate keys are dropped when touched; a full sweep at most this often
# bounds the memory held by ones never touched again.
_SWEEP_INTERVAL_S = 60.0
# Ended reservations the expiry heap may keep beyond twice those held, before it is rebuilt.
_COMPACT_SLACK = 1024

# (window, window start, scope key): one window of one scope, like one Redis counter hash.
_CounterKey = tuple[Window, int, str]


def _zeros() -> dict[Metric, int]:
    return dict.fromkeys(METRICS, 0)


@dataclass
class _Counter:
    used: dict[Metric, int] = field(default_factory=_zeros)
    reserved: dict[Metric, int] = field(default_factory=_zeros)
    overage: dict[Metric, int] = field(default_factory=_zeros)
    expires_at: float | None = None  # None: a lifetime counter, kept for good


@dataclass(frozen=True)
class _Hold:
    """What one reservation holds in one counter: ``amount`` of ``metric``."""

    counter: _CounterKey
    metric: Metric
    amount: int


class MemoryBudgetLedger(BudgetLedger):
    """Counters and reservations in dicts. Same contract as ``BudgetLedger``; never unavailable.

    ``clock`` gives Unix time in seconds (windows are calendar-aligned, so it is the wall clock).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[_CounterKey, _Counter] = {}
        self._held: dict[str, tuple[tuple[_Hold, ...], float]] = {}
        self._expiries: list[tuple[float, str]] = []  # heap; may hold ended reservations
        self._next_sweep = clock() + _SWEEP_INTERVAL_S

    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float
    ) -> Reservation | BudgetRefusal:
        return self._reserve(scopes, amounts, check_reserve_arguments(scopes, amounts, ttl_s))

    def roll_soon(
        self, ended: Reservation, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float,
        settled: Callable[[BaseException | None], None],
        reserved: Callable[[Reservation | BudgetRefusal | BaseException], None],
    ) -> bool:  # fmt: skip
        """Both at once: nothing here waits."""
        try:
            ttl_ms = check_reserve_arguments(scopes, amounts, ttl_s)  # the amounts too
        except ValueError:
            return False
        self._finish(ended.id, amounts, self._clock())
        settled(None)
        reserved(self._reserve(scopes, amounts, ttl_ms))
        return True

    def _reserve(
        self, scopes: Sequence[Scope], amounts: Usage, ttl_ms: int
    ) -> Reservation | BudgetRefusal:
        now = self._clock()
        self._reclaim(now)
        planned = list(_plan(scopes, now))
        refusal = self._first_refusal(planned, amounts, now)
        if refusal is not None:
            return refusal
        expires_at = now + ttl_ms / 1000
        holds = tuple(
            _Hold(key, limit.metric, amounts.of(limit.metric)) for _, limit, key in planned
        )
        for hold in holds:
            counter = self._counters.setdefault(hold.counter, _Counter())
            counter.reserved[hold.metric] += hold.amount
            _keep_until(counter, hold.counter, expires_at)
        reservation = Reservation(new_id(), tuple(scopes), amounts, expires_at)
        self._held[reservation.id] = (holds, expires_at)
        heapq.heappush(self._expiries, (expires_at, reservation.id))
        return reservation

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        check_usage(actual)
        self._finish(reservation.id, actual, self._clock())

    async def release(self, reservation: Reservation) -> None:
        self._finish(reservation.id, None, self._clock())

    async def expire(self) -> int:
        return self._reclaim(self._clock())

    async def status(self, scopes: Sequence[Scope]) -> list[BudgetStatus]:
        check_reserve_arguments(scopes, Usage(), 1)
        now = self._clock()
        return [
            _status_of(scope, limit, key, self._counter(key, now))
            for scope, limit, key in _plan(scopes, now)
        ]

    def _first_refusal(
        self, planned: list[tuple[Scope, Limit, _CounterKey]], amounts: Usage, now: float
    ) -> BudgetRefusal | None:
        """The first limit that ``amounts`` would take past its limit, or None if all fit."""
        for scope, limit, key in planned:
            counter = self._counter(key, now)
            used, reserved = counter.used[limit.metric], counter.reserved[limit.metric]
            if used + reserved + amounts.of(limit.metric) > limit.limit:
                return BudgetRefusal(
                    scope.key(), limit.metric, limit.window, limit.limit, used, reserved
                )
        return None

    def _finish(self, reservation_id: str, actual: Usage | None, now: float) -> None:
        """Take the reservation's holds off its counters; charge ``actual`` (None: nothing)."""
        entry = self._held.pop(reservation_id, None)
        if entry is None:
            return
        self._compact_expiries()
        for hold in entry[0]:
            counter = self._live(hold.counter, now)
            if counter is None:
                continue  # the window's counters are gone: nothing left to correct
            counter.reserved[hold.metric] -= hold.amount
            if actual is not None:
                spent = actual.of(hold.metric)
                counter.used[hold.metric] += min(spent, hold.amount)
                counter.overage[hold.metric] += max(0, spent - hold.amount)

    def _compact_expiries(self) -> None:
        """Rebuild the expiry heap once most of it is reservations already ended, so memory
        follows the reservations held, not those made within the last ``ttl_s`` (amortised
        O(1) per reservation)."""
        if len(self._expiries) > 2 * len(self._held) + _COMPACT_SLACK:
            self._expiries = [(expires_at, rid) for rid, (_, expires_at) in self._held.items()]
            heapq.heapify(self._expiries)

    def _reclaim(self, now: float) -> int:
        """Release every reservation whose expiry is at or before ``now``; how many."""
        reclaimed = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, reservation_id = heapq.heappop(self._expiries)
            if reservation_id in self._held:
                self._finish(reservation_id, None, now)
                reclaimed += 1
        return reclaimed

    def _counter(self, key: _CounterKey, now: float) -> _Counter:
        """The live counter at ``key``, or a fresh zero one (not stored)."""
        self._sweep(now)
        return self._live(key, now) or _Counter()

    def _live(self, key: _CounterKey, now: float) -> _Counter | None:
        """The counter at ``key``, unless it has expired (then dropped, as a Redis TTL would)."""
        counter = self._counters.get(key)
        if counter is not None and counter.expires_at is not None and counter.expires_at <= now:
            del self._counters[key]
            return None
        return counter

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_S
        for key in list(self._counters):
            self._live(key, now)


def _plan(scopes: Sequence[Scope], now: float) -> Iterator[tuple[Scope, Limit, _CounterKey]]:
    """Every (scope, limit) in order, with the counter of its current window."""
    for scope in scopes:
        for limit in scope.limits:
            yield scope, limit, (limit.window, start_of(limit.window, now), scope.key())


def _keep_until(counter: _Counter, key: _CounterKey, held_until: float) -> None:
    """Keep ``counter`` past its window's end and ``held_until``, plus the grace period."""
    window, start, _ = key
    end = window_end(window, start)
    if end is None:
        return
    keep_until = max(float(end), held_until) + COUNTER_GRACE_S
    counter.expires_at = max(counter.expires_at or 0.0, keep_until)


def _status_of(scope: Scope, limit: Limit, key: _CounterKey, counter: _Counter) -> BudgetStatus:
    used, reserved = counter.used[limit.metric], counter.reserved[limit.metric]
    return BudgetStatus(
        scope=scope.key(),
        metric=limit.metric,
        window=limit.window,
        limit=limit.limit,
        used=used,
        reserved=reserved,
        remaining=max(0, limit.limit - used - reserved),
        window_start=key[1],
        overage=counter.overage[limit.metric],
    )


class MemoryRateLimiter(RateLimiter):
    """GCRA with a theoretical arrival time per key. Same contract as ``RateLimiter``.

    ``clock`` gives seconds on any monotonic scale.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}  # key -> theoretical arrival time, microseconds
        self._next_sweep = clock() + _SWEEP_INTERVAL_S

    async def acquire(self, key: str, *, rate_per_s: float, burst: int) -> float:
        interval_us, tolerance_us = gcra_parameters(rate_per_s, burst)
        now_us = int(self._clock() * MICROS)
        self._sweep(now_us)
        arrival_us = max(self._tats.get(key, 0), now_us) + interval_us
        allowed_at_us = arrival_us - tolerance_us
        if allowed_at_us > now_us:
            return (allowed_at_us - now_us) / MICROS
        self._tats[key] = arrival_us
        return 0.0

    def _sweep(self, now_us: int) -> None:
        # A key whose arrival time has passed is as good as a key never seen.
        if now_us < self._next_sweep * MICROS:
            return
        self._next_sweep = now_us / MICROS + _SWEEP_INTERVAL_S
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now_us}

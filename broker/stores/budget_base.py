"""Store interfaces for spend: the budget ledger and the rate limiter.

Both hold across every broker replica on the Redis backend and give the same answers on the
memory backend; ``tests/contract/test_budget_stores.py`` checks both. A backend that cannot reach
its storage raises ``StoreUnavailableError`` and never answers from a guess (fail closed).
"""

from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from broker.budgets.model import Limit, Metric, Scope, Usage, Window, check_scopes, check_usage
from broker.pipeline.stage import started

# The budget types travel with the ledger's interface; callers may import them from here.
__all__ = [
    "COUNTER_GRACE_S",
    "MICROS",
    "BudgetLedger",
    "BudgetRefusal",
    "BudgetStatus",
    "Limit",
    "Metric",
    "RateLimiter",
    "Reservation",
    "Scope",
    "Usage",
    "Window",
    "check_reserve_arguments",
    "gcra_parameters",
]

# Rate limiter arithmetic is done in whole microseconds, the Redis server clock's resolution.
MICROS: Final = 1_000_000
# A window's counters are kept this long after the window ends, or after the last reservation
# held in it expires, whichever is later; a settle arriving later finds nothing to change.
COUNTER_GRACE_S: Final = 60


class Reservation(msgspec.Struct, frozen=True):
    """Amounts held against every limit of ``scopes`` until settled, released or expired.

    ``expires_at`` is a Unix time (seconds, by the backend's clock): after it the ledger may
    reclaim the amounts, as if released.
    """

    id: str
    scopes: tuple[Scope, ...]
    amounts: Usage
    expires_at: float


class BudgetRefusal(msgspec.Struct, frozen=True):
    """``reserve`` took nothing: ``used + reserved + amount`` would exceed this limit."""

    scope: str
    metric: Metric
    window: Window
    limit: int
    used: int
    reserved: int


class BudgetStatus(msgspec.Struct, frozen=True):
    """One limit of one scope in its current window.

    ``remaining = max(0, limit - used - reserved)``. ``overage`` is actual spend that settles
    reported beyond what was reserved: it is recorded here, never charged to ``used``.
    """

    scope: str
    metric: Metric
    window: Window
    limit: int
    used: int
    reserved: int
    remaining: int
    window_start: int
    overage: int = 0


class BudgetLedger(abc.ABC):
    """Reserve-then-settle accounting of spend against limits, exact under any concurrency.

    Invariant: for every limit of every scope, in every window, ``used + reserved <= limit``
    holds after every operation (unless the limit itself is lowered below it). Every method
    raises ``StoreUnavailableError`` if the backend is unreachable; ValueError for unusable
    arguments (before touching any state).
    """

    @abc.abstractmethod
    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float
    ) -> Reservation | BudgetRefusal:
        """Hold ``amounts`` against every limit of every scope, or refuse, atomically.

        Reservations past their expiry are reclaimed first. Then, if for some limit (scopes in
        order, limits in order) ``used + reserved + amount > limit`` in the current window, the
        first such limit is returned and nothing changes. Otherwise each limit's counter in its
        current window gains ``amount`` reserved, and the reservation holds until settled,
        released or ``ttl_s`` seconds pass (whole milliseconds, rounded up). Raises ValueError if
        ``ttl_s`` is not positive and finite, an amount or
        limit is negative or above 2**53-1, a scope appears twice or limits a (metric, window)
        twice.
        """

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        """End ``reservation``, charging what was spent, atomically.

        Each counter the reservation held loses its reserved amount and gains
        ``min(actual, reserved)`` used, in the window it was reserved in; spend beyond the
        reservation goes to ``overage`` instead, so racing reservations never overspend a
        limit. Nothing happens if the reservation was settled, released or reclaimed before.
        Raises ValueError if an amount of ``actual`` is negative or above 2**53-1.
        """

    def settle_soon(
        self, reservation: Reservation, actual: Usage, done: Callable[[BaseException | None], None]
    ) -> None:
        """``settle``, started now for no one to await: its store call is queued in the running
        turn (so it shares the round trip of what the caller queues next in it), and ``done`` is
        told how it ended: None once it landed, or what ``settle`` would have raised (a store
        failure is retried by the ledger until it lands, as ``settle`` retries it). ``done``
        may be called before this returns; it must not raise."""
        started(self.settle(reservation, actual)).add_done_callback(
            lambda settling: done(_failure_of(settling))
        )

    def roll_soon(
        self, ended: Reservation, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float,
        settled: Callable[[BaseException | None], None],
        reserved: Callable[[Reservation | BudgetRefusal | BaseException], None],
    ) -> bool:  # fmt: skip
        """``settle_soon(ended, amounts, settled)`` and a ``reserve(scopes, amounts, ttl_s=...)``
        for the next call, in one store call (decision 0110): ``reserved`` gets what the reserve
        returns, or what it would have raised. Both are queued in the running turn and told once
        each, settled first. False, with nothing done, where this ledger has no such call (or
        not for these scopes): the caller then settles and reserves apart."""
        return False

    @abc.abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """End ``reservation`` spending nothing, atomically; nothing happens if it ended before."""

    @abc.abstractmethod
    async def expire(self) -> int:
        """Release every reservation whose expiry has passed; how many there were."""

    @abc.abstractmethod
    async def status(self, scopes: Sequence[Scope]) -> list[BudgetStatus]:
        """Each limit of each scope (in order) in its current window. Changes nothing.

        Reservations past their expiry still count here until ``reserve`` or ``expire``
        reclaims them. Raises ValueError on the scopes ``reserve`` would refuse.
        """


class RateLimiter(abc.ABC):
    """Request rates per key (an agent, an edge), shared by every replica; GCRA.

    A key admits ``burst`` requests at once, then one every ``1 / rate_per_s`` seconds.
    """

    @abc.abstractmethod
    async def acquire(self, key: str, *, rate_per_s: float, burst: int) -> float:
        """Take one request for ``key`` atomically.

        0.0 if admitted; otherwise nothing is taken and the result is the number of seconds
        after which the same call would be admitted (for ``Retry-After``). Raises ValueError
        unless ``rate_per_s > 0`` and ``burst >= 1``; ``StoreUnavailableError`` if the backend
        is unreachable.
        """


def check_reserve_arguments(scopes: Sequence[Scope], amounts: Usage, ttl_s: float) -> int:
    """The reservation's TTL in whole ms (rounded up); ValueError unless ``reserve`` can take
    these arguments (every backend checks the same way, before touching any state)."""
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError("ttl_s must be positive")
    check_scopes(scopes)
    check_usage(amounts)
    return math.ceil(ttl_s * 1000)


def gcra_parameters(rate_per_s: float, burst: int) -> tuple[int, int]:
    """The emission interval and burst tolerance in microseconds; ValueError if unusable."""
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError("rate_per_s must be positive")
    if not isinstance(burst, int) or burst < 1:
        raise ValueError("burst must be at least 1")
    interval_us = max(1, round(MICROS / rate_per_s))
    return interval_us, interval_us * burst


def _failure_of(future: asyncio.Future[None]) -> BaseException | None:
    return asyncio.CancelledError() if future.cancelled() else future.exception()

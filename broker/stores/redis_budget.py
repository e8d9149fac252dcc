"""The budget ledger and rate limiter in Redis, exact across every broker replica.

Each reserve, settle, release, expire and status is ONE Lua script (one round trip): the
``budget_*.lua`` files, each run behind ``budget_common.lua``. Scripts date windows and expiries
by the Redis server's clock, so replicas with skewed clocks agree. Keys:

- ``<prefix>:{budget}:rsv``: hash, reservation id -> JSON list of holds ``[counter key, metric,
  amount]``, the record settle and release undo
- ``<prefix>:{budget}:rsv:exp``: sorted set, reservation id -> expiry (ms since the epoch)
- ``<prefix>:{budget}:w:<window>:<window start>:<scope key>``: hash of one scope's counters in
  one window, fields ``used:<metric>``, ``rsv:<metric>``, ``over:<metric>``; it expires
  ``COUNTER_GRACE_S`` after its window ends or its last reservation expires, whichever is later
  ("lifetime" counters never expire)
- ``<prefix>:rl:{<len(key)>:<key>}``: a rate-limited key's GCRA arrival time (µs), expiring
  when it has passed

Every budget key carries the hash tag ``{budget}``, so one script can check and hold the
limits of an agent, its team, its task tree and its edge together, on Redis Cluster too. The
price: all budgets live in one cluster slot, on one node (its throughput is the ceiling, about
one script per request); rate limits, which touch one key, spread over the cluster. Counter keys
are derived inside the scripts from the server's time, so they are not declared in ``KEYS``;
they hash to the slot of the declared keys, which Redis Cluster accepts.

Every Redis failure surfaces as ``StoreUnavailableError`` (see ``redis_client``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from broker.budgets.model import METRICS, WINDOWS, Limit, Metric, Scope, Usage, Window, check_usage
from broker.late_writes import LateWrites
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
from broker.stores.redis_client import REDIS_FAILURES, RedisClient, lua_source, unavailable_on_error


def budget_script(name: str) -> str:
    """The text of ``budget_<name>.lua`` behind the shared helpers it calls."""
    grace = f"local COUNTER_GRACE_MS = {COUNTER_GRACE_S * 1000}\n"
    return grace + lua_source("budget_common.lua") + lua_source(f"budget_{name}.lua")


_RATE_LIMIT_LUA = lua_source("rate_limit_acquire.lua")


def budget_base_key(prefix: str) -> str:
    """The start of every budget key; its hash tag puts them all in one cluster slot."""
    return f"{prefix}:{{budget}}"


class RedisBudgetLedger(BudgetLedger):
    """Counters and reservations under one hash tag. Same contract as ``BudgetLedger``.

    Every method raises ``StoreUnavailableError`` if Redis fails. A reserve whose reply was lost
    may have held its amounts; they are reclaimed once its ``ttl_s`` has passed.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._reserve = client.register_script(budget_script("reserve"))
        self._settle = client.register_script(budget_script("settle"))
        self._release = client.register_script(budget_script("release"))
        self._void = client.register_script(budget_script("void"))
        # Settles, releases and voids lost to an outage, retried until Redis answers.
        self._late = LateWrites(REDIS_FAILURES)
        self._expire = client.register_script(budget_script("expire"))
        self._status = client.register_script(budget_script("status"))
        self._base = budget_base_key(prefix)
        self._keys = [f"{self._base}:rsv", f"{self._base}:rsv:exp"]

    @unavailable_on_error
    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float
    ) -> Reservation | BudgetRefusal:
        ttl_ms = check_reserve_arguments(scopes, amounts, ttl_s)
        reservation_id = uuid.uuid4().hex
        limits = [
            part
            for scope in scopes
            for limit in scope.limits
            for part in (scope.key(), limit.metric, limit.window, limit.limit)
        ]
        args = [self._base, reservation_id, ttl_ms, *_amounts(amounts), *limits]
        try:
            reply = await self._reserve(keys=self._keys, args=args)
        except REDIS_FAILURES:
            # The reserve may still run (a stalled Redis runs it when it resumes) and would hold
            # budget for a call that is refused: void it as soon as Redis answers again.
            self._void_later(reservation_id, ttl_ms)
            raise
        if int(reply[0]) == 2:  # voided by an earlier attempt with this id: cannot happen twice
            raise RedisError("reservation voided before it ran")
        if int(reply[0]) == 1:
            return Reservation(reservation_id, tuple(scopes), amounts, int(reply[1]) / 1000)
        scope, metric, window, limit, used, reserved = (_text(part) for part in reply[1:])
        return BudgetRefusal(
            scope, _metric(metric), _window(window), int(limit), int(used), int(reserved)
        )

    def _void_later(self, reservation_id: str, ttl_ms: int) -> None:
        until = time.time() + ttl_ms / 1000
        args = [self._base, reservation_id, ttl_ms]
        self._retry_later(self._void, args, until, f"void of reservation {reservation_id}")

    def _retry_later(self, script: AsyncScript, args: list[Any], until: float, what: str) -> None:
        """Run an idempotent ``script`` in the background until Redis answers or ``until``."""

        async def attempt() -> None:
            await script(keys=self._keys, args=args)

        self._late.add(attempt, until=until, what=what)

    @unavailable_on_error
    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        check_usage(actual)
        args: list[Any] = [reservation.id, *_amounts(actual)]
        try:
            await self._settle(keys=self._keys, args=args)
        except REDIS_FAILURES:
            # The call was answered: its spend must land, or an outage would let it go unpaid
            # once the reservation expires. Settling is idempotent, so retry until Redis
            # answers (while the reservation lives).
            what = f"settle of reservation {reservation.id}"
            self._retry_later(self._settle, args, reservation.expires_at, what)
            raise

    @unavailable_on_error
    async def release(self, reservation: Reservation) -> None:
        args: list[Any] = [reservation.id]
        try:
            await self._release(keys=self._keys, args=args)
        except REDIS_FAILURES:
            what = f"release of reservation {reservation.id}"
            self._retry_later(self._release, args, reservation.expires_at, what)
            raise

    @unavailable_on_error
    async def expire(self) -> int:
        return int(await self._expire(keys=self._keys))

    @unavailable_on_error
    async def status(self, scopes: Sequence[Scope]) -> list[BudgetStatus]:
        check_reserve_arguments(scopes, Usage(), 1)
        pairs = [(scope, limit) for scope in scopes for limit in scope.limits]
        args = [
            part for scope, limit in pairs for part in (scope.key(), limit.metric, limit.window)
        ]
        reply = await self._status(keys=self._keys, args=[self._base, *args])
        counts = [int(part) for part in reply]
        return [
            _status_of(scope, limit, counts[4 * index : 4 * index + 4])
            for index, (scope, limit) in enumerate(pairs)
        ]


def _status_of(scope: Scope, limit: Limit, counts: list[int]) -> BudgetStatus:
    """A status from the script's ``[used, reserved, overage, window start]`` of one limit."""
    used, reserved, overage, start = counts
    return BudgetStatus(
        scope=scope.key(),
        metric=limit.metric,
        window=limit.window,
        limit=limit.limit,
        used=used,
        reserved=reserved,
        remaining=max(0, limit.limit - used - reserved),
        window_start=start,
        overage=overage,
    )


class RedisRateLimiter(RateLimiter):
    """GCRA with one arrival-time key per rate-limited key. Same contract as ``RateLimiter``.

    Raises ``StoreUnavailableError`` if Redis fails.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._acquire = client.register_script(_RATE_LIMIT_LUA)
        self._prefix = prefix

    @unavailable_on_error
    async def acquire(self, key: str, *, rate_per_s: float, burst: int) -> float:
        interval_us, tolerance_us = gcra_parameters(rate_per_s, burst)
        # The length keeps any key from running into the rest of the Redis key.
        redis_key = f"{self._prefix}:rl:{{{len(key)}:{key}}}"
        wait_us = await self._acquire(keys=[redis_key], args=[interval_us, tolerance_us])
        return int(wait_us) / MICROS


def _amounts(usage: Usage) -> list[int]:
    return [usage.of(metric) for metric in METRICS]


def _text(part: bytes | str | int) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


# Script replies are text; these turn them back into the Literal types without a cast.
_METRIC_BY_NAME: dict[str, Metric] = {metric: metric for metric in METRICS}
_WINDOW_BY_NAME: dict[str, Window] = {window: window for window in WINDOWS}


def _metric(name: str) -> Metric:
    return _METRIC_BY_NAME[name]


def _window(name: str) -> Window:
    return _WINDOW_BY_NAME[name]

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

import asyncio
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from broker.budgets.model import METRICS, WINDOWS, Limit, Metric, Scope, Usage, Window, check_usage
from broker.ids import new_id
from broker.late_writes import LateWrites
from broker.observability.probes import store_call
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
from broker.stores.redis_batch import BatchedScript
from broker.stores.redis_budget_wire import BudgetCommands, Template
from broker.stores.redis_client import (
    REDIS_FAILURES,
    RedisClient,
    lua_source,
    store_error,
    unavailable_on_error,
)


def budget_script(name: str) -> str:
    """The text of ``budget_<name>.lua`` behind the shared helpers it calls."""
    grace = f"local COUNTER_GRACE_MS = {COUNTER_GRACE_S * 1000}\n"
    return grace + lua_source("budget_common.lua") + lua_source(f"budget_{name}.lua")


_RATE_LIMIT_LUA = lua_source("rate_limit_acquire.lua")
# Before the one retry of a multi-shard reserve refused only by holds: up to this long a wait.
_RETRY_JITTER_S = 0.002
# At most this many tuples of scopes keep their shards and script arguments (decision 0086).
_PLANS_MAX = 4096
# ``settle`` 's metrics (``unavailable_on_error`` 's), for a settle no one awaits.
_settle_took, _settle_failed = store_call("RedisBudgetLedger.settle")


def budget_base_key(prefix: str) -> str:
    """The start of every budget key; its hash tag puts them all in one cluster slot."""
    return f"{prefix}:{{budget}}"


def budget_shard_base_key(prefix: str, shard: int, shards: int) -> str:
    """The start of shard ``shard``'s budget keys: ``budget_base_key`` when there is one shard
    (the layout of versions without shards), else under the hash tag ``{budget:<shard>}``."""
    return budget_base_key(prefix) if shards == 1 else f"{prefix}:{{budget:{shard}}}"


def budget_shard_of(scope_key: str, shards: int) -> int:
    """The shard that holds a scope's counters: crc32 of its key, modulo the shard count."""
    return zlib.crc32(scope_key.encode()) % shards if shards > 1 else 0


class RedisBudgetLedger(BudgetLedger):
    """Counters and reservations under one hash tag per shard. Same contract as
    ``BudgetLedger``, with one weakening when ``shards > 1`` (decision 0037, below).

    Every method raises ``StoreUnavailableError`` if Redis fails. A reserve whose reply was lost
    may have held its amounts; they are reclaimed once its ``ttl_s`` has passed.

    With ``shards`` S > 1, a scope's counters live in shard ``crc32(scope key) mod S`` and each
    shard has its own reservations hash and expiry set. A reserve runs one script per shard its
    scopes touch, all sent in the same batch (one round trip per node, in parallel); each
    script checks and holds its shard's limits atomically, so no limit is ever exceeded. If any
    shard refuses, the holds taken on the others are released before the refusal is returned.
    Exactness then holds as long as reserves do not race across shards: two racing reserves,
    each refused by a different shard, can each briefly hold what the other needed and both be
    refused while room was left. A multi-shard reserve refused only because of holds (``used``
    alone would have left room) is therefore tried once more. A reserve reclaims dead
    reservations in the shards it touches (before checking their limits, as with one shard);
    one dead in another shard shows in ``status`` until a reserve there or ``expire`` reclaims
    it, and ``expire`` counts a reservation once however many shards it held in.
    """

    def __init__(self, client: RedisClient, prefix: str, shards: int = 1) -> None:
        if shards < 1:
            raise ValueError("budget shards must be at least 1")
        self._reserve = client.register_script(budget_script("reserve"))
        self._settle = client.register_script(budget_script("settle"))
        self._roll = client.register_script(budget_script("roll"))
        self._release = client.register_script(budget_script("release"))
        self._void = client.register_script(budget_script("void"))
        # Settles, releases and voids lost to an outage, retried until Redis answers.
        self._late = LateWrites(REDIS_FAILURES)
        self._expire = client.register_script(budget_script("expire"))
        self._status = client.register_script(budget_script("status"))
        self._shards = shards
        self._bases = [budget_shard_base_key(prefix, shard, shards) for shard in range(shards)]
        self._keys = [[f"{base}:rsv", f"{base}:rsv:exp"] for base in self._bases]
        # id of a tuple of scopes -> its plan: a call's scopes are the same tuple per caller
        # until a reload of the limits (``ConfiguredScopes``), so a reserve and its settle do
        # not work them out again.
        self._plans: dict[int, _Plan] = {}
        self._commands = _commands_for(
            self._reserve, self._settle, self._roll, self._keys, self._bases
        )

    def _shard(self, scope_key: str) -> int:
        return budget_shard_of(scope_key, self._shards)

    def _shards_of(self, scopes: Sequence[Scope]) -> list[int]:
        """The shards ``scopes`` touch, in order of first use; shard 0 for no scope (the
        reservation's record lives somewhere, as with one shard)."""
        return self._plan(scopes).shards

    def _plan(self, scopes: Sequence[Scope]) -> _Plan:
        """How a reserve of ``scopes`` goes out (``_Plan``). Callers do not change it."""
        if isinstance(scopes, tuple):
            known = self._plans.get(id(scopes))
            if known is not None and known.scopes is scopes:
                return known
        keys = [scope.key() for scope in scopes]
        shards = list(dict.fromkeys(self._shard(key) for key in keys)) or [0]
        limits: dict[int, list[Any]] = {shard: [] for shard in shards}
        for scope, key in zip(scopes, keys, strict=True):
            for limit in scope.limits:
                limits[self._shard(key)] += [key, limit.metric, limit.window, limit.limit]
        commands = self._commands
        templates = (
            {} if commands is None
            else {shard: commands.reserve_template(shard, limits[shard]) for shard in shards}
        )  # fmt: skip
        rolls = (
            {} if commands is None or len(shards) > 1
            else {shards[0]: commands.roll_template(shards[0], limits[shards[0]])}
        )  # fmt: skip
        plan = _Plan(scopes, shards, limits, templates, rolls)
        if isinstance(scopes, tuple) and all(type(scope.limits) is tuple for scope in scopes):
            if len(self._plans) >= _PLANS_MAX:  # callers and targets come from outside
                self._plans.clear()
            # The tuple is held in the plan, so its id is not reused while the entry lives.
            self._plans[id(scopes)] = plan
        return plan

    @unavailable_on_error
    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float
    ) -> Reservation | BudgetRefusal:
        ttl_ms = check_reserve_arguments(scopes, amounts, ttl_s)
        result = await self._reserve_once(scopes, amounts, ttl_ms)
        if (
            isinstance(result, BudgetRefusal)
            and len(self._shards_of(scopes)) > 1
            and result.used + amounts.of(result.metric) <= result.limit
        ):
            # Refused only by holds, which may be another reserve's transient ones on its way to
            # being refused elsewhere (decision 0037): once more, after a moment's jitter so two
            # such racers do not meet again in step.
            await asyncio.sleep(random.uniform(0, _RETRY_JITTER_S))  # noqa: S311 - not a secret
            result = await self._reserve_once(scopes, amounts, ttl_ms)
        return result

    async def _reserve_once(
        self, scopes: Sequence[Scope], amounts: Usage, ttl_ms: int
    ) -> Reservation | BudgetRefusal:
        reservation_id = new_id()
        plan = self._plan(scopes)
        shards, numbers = plan.shards, (ttl_ms, *amounts.amounts())
        replies = await _together(
            [self._reserve_on(plan, shard, reservation_id, numbers) for shard in shards]
        )
        failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
        if failed is not None:
            # A reserve may still run (a stalled Redis runs it when it resumes) and would hold
            # budget for a call that is refused: void it on every shard as soon as Redis answers
            # again (a void releases what a reserve held, or stops one still to run).
            for shard in shards:
                self._void_later(shard, reservation_id, ttl_ms)
            raise failed
        if any(int(reply[0]) == 2 for reply in replies):
            # voided by an earlier attempt with this id: cannot happen twice
            raise RedisError("reservation voided before it ran")
        refusals = [_refusal(reply) for reply in replies if int(reply[0]) == 0]
        if not refusals:
            expires_ms = min(int(reply[1]) for reply in replies)
            return Reservation(reservation_id, tuple(scopes), amounts, expires_ms / 1000)
        held = [shard for shard, reply in zip(shards, replies, strict=True) if int(reply[0]) == 1]
        if held:
            await self._on_shards(self._release, held, [reservation_id], "release", ttl_ms)
        # The first limit hit in contract order: scopes in order, limits in order.
        order = {
            (scope.key(), limit.metric, limit.window): index
            for index, (scope, limit) in enumerate(
                (scope, limit) for scope in scopes for limit in scope.limits
            )
        }
        return min(refusals, key=lambda r: order.get((r.scope, r.metric, r.window), 0))

    def _reserve_on(
        self, plan: _Plan, shard: int, reservation_id: str, numbers: tuple[int, ...]
    ) -> Awaitable[Any]:
        """The reserve's script call on ``shard``; ``numbers``: its TTL (ms), then its amounts.
        Packed here, from the plan's parts packed once, when the batcher writes packed calls."""
        args = [self._bases[shard], reservation_id, *numbers, *plan.limits[shard]]
        commands = self._commands
        if commands is None:
            return _send(self._reserve, self._keys[shard], args)
        packed = commands.reserve(plan.templates[shard], reservation_id, numbers)
        return _send(self._reserve, self._keys[shard], args, packed)

    async def _on_shards(
        self, script: AsyncScript, shards: list[int], args: list[Any], what: str, ttl_ms: int
    ) -> None:
        """Run ``script`` with ``args`` on each of ``shards`` together; a shard that does not
        answer gets it retried in the background (it is idempotent) for ``ttl_ms``, and the
        first failure is raised once every shard was tried."""
        outcomes = await _together(_send(script, self._keys[shard], args) for shard in shards)
        self._retry_failed(script, shards, args, outcomes, what=what, ttl_ms=ttl_ms)

    def _retry_failed(
        self, script: AsyncScript, shards: list[int], args: list[Any], outcomes: list[Any],
        *, what: str, ttl_ms: int,
    ) -> None:  # fmt: skip
        """``_on_shards`` once the shards answered: the failed ones retried, the first failure
        raised."""
        failure: BaseException | None = None
        until = time.time() + ttl_ms / 1000
        for shard, outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, REDIS_FAILURES):
                    raise outcome
                self._retry_later(shard, script, args, until, f"{what} on budget shard {shard}")
                failure = failure or outcome
        if failure is not None:
            raise failure

    def _void_later(self, shard: int, reservation_id: str, ttl_ms: int) -> None:
        until = time.time() + ttl_ms / 1000
        args = [self._bases[shard], reservation_id, ttl_ms]
        self._retry_later(shard, self._void, args, until, f"void of reservation {reservation_id}")

    def _retry_later(
        self, shard: int, script: AsyncScript, args: list[Any], until: float, what: str
    ) -> None:
        """Run an idempotent ``script`` in the background until Redis answers or ``until``."""

        async def attempt() -> None:
            await script(keys=self._keys[shard], args=args)

        self._late.add(attempt, until=until, what=what)

    @unavailable_on_error
    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        check_usage(actual)
        # The call was answered: its spend must land, or an outage would let it go unpaid once
        # the reservation expires. Settling is idempotent, so a shard that does not answer is
        # retried until Redis answers (while the reservation lives).
        amounts = actual.amounts()
        await self._finish(self._settle, reservation, [reservation.id, *amounts], "settle", amounts)

    def settle_soon(
        self, reservation: Reservation, actual: Usage, done: Callable[[BaseException | None], None]
    ) -> None:
        """``settle`` for no one to await (the usual settle of a metered call, decision 0094):
        on one shard of the batching client, its script is queued with a callback, so no task,
        coroutine or future is made for it and no loop turn is spent waking one. The same
        script, arguments, retry of a failure (named and timed as ``settle`` names it) and
        metrics; ``done`` gets what ``settle`` would have raised."""
        script = self._settle
        shards = self._shards_of(reservation.scopes)
        if len(shards) > 1 or not isinstance(script, BatchedScript):
            super().settle_soon(reservation, actual, done)
            return
        try:
            check_usage(actual)
        except ValueError as exc:
            done(exc)
            return
        (shard,) = shards
        amounts = actual.amounts()
        args: list[Any] = [reservation.id, *amounts]
        packed = self._settle_packed(shard, reservation.id, amounts)
        started, now = time.perf_counter(), time.time()

        def landed(reply: Any) -> None:
            _settle_took(time.perf_counter() - started)
            done(self._settle_failure(reservation, shard, args, reply, now))

        script.registered_client.batcher.notify(script, self._keys[shard], args, landed, packed)

    def roll_soon(
        self, ended: Reservation, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float,
        settled: Callable[[BaseException | None], None],
        reserved: Callable[[Reservation | BudgetRefusal | BaseException], None],
    ) -> bool:  # fmt: skip
        """One script for both, on one shard of the batching client (budget_roll.lua, decision
        0110). Should its reply be lost, the settle is retried alone (it is idempotent: a roll
        that did run ended the reservation, and the retry then changes nothing) and the new id
        is voided, as a reserve's is; ``settled`` and ``reserved`` get the failure."""
        script = self._roll
        if not isinstance(script, BatchedScript):
            return False
        try:
            ttl_ms = check_reserve_arguments(scopes, amounts, ttl_s)
        except ValueError:
            return False
        plan = self._plan(scopes)
        if len(plan.shards) > 1 or self._shards_of(ended.scopes) != plan.shards:
            return False
        (shard,) = plan.shards
        reservation_id = new_id()
        numbers = (ttl_ms, *amounts.amounts())
        args: list[Any] = [self._bases[shard], reservation_id, *numbers, ended.id,
                           *plan.limits[shard]]  # fmt: skip
        commands = self._commands
        packed = (
            b"" if commands is None
            else commands.roll(plan.rolls.get(shard), reservation_id, numbers, ended.id)
        )  # fmt: skip
        started, now = time.perf_counter(), time.time()

        def landed(reply: Any) -> None:
            _settle_took(time.perf_counter() - started)
            if not isinstance(reply, BaseException):
                settled(None)
                reserved(_reserved(scopes, amounts, reservation_id, reply[1]))
                return
            # The settle alone, retried until it lands.
            settle_args = [ended.id, *numbers[1:]]
            failure = self._settle_failure(ended, shard, settle_args, reply, now) or reply
            if isinstance(reply, REDIS_FAILURES):
                self._void_later(shard, reservation_id, ttl_ms)
            settled(failure)
            reserved(failure)

        script.registered_client.batcher.notify(script, self._keys[shard], args, landed, packed)
        return True

    def _settle_failure(
        self, reservation: Reservation, shard: int, args: list[Any], reply: Any, now: float
    ) -> BaseException | None:
        """What an awaited settle of ``reservation`` on ``shard`` (``args``, sent at ``now``)
        would have raised given ``reply`` (None: it landed); a failed one is retried."""
        try:
            self._retry_any_failed(
                self._settle, reservation, [shard], args, [reply], what="settle", now=now
            )
        except (RedisError, RedisClusterException) as exc:  # as ``unavailable_on_error``
            _settle_failed()
            error = store_error(exc)
            error.__cause__ = exc  # ``raise ... from exc``, as the awaited settle raises it
            return error
        except BaseException as exc:
            return exc
        return None

    def _settle_packed(self, shard: int, reservation_id: str, amounts: tuple[int, ...]) -> bytes:
        """The settle's command on ``shard`` from its parts packed once; b"" if the batcher
        packs it (it does not write packed calls, or this call is not for the fast way)."""
        commands = self._commands
        return b"" if commands is None else commands.settle(shard, reservation_id, amounts)

    @unavailable_on_error
    async def release(self, reservation: Reservation) -> None:
        await self._finish(self._release, reservation, [reservation.id], "release")

    async def _finish(
        self, script: AsyncScript, reservation: Reservation, args: list[Any], what: str,
        settled: tuple[int, ...] | None = None,
    ) -> None:  # fmt: skip
        """Settle or release ``reservation`` on its shards; ``settled``: a settle's amounts,
        its command then packed from the parts packed once (``_settle_packed``)."""
        shards = self._shards_of(reservation.scopes)
        now = time.time()
        outcomes = await _together(
            _send(script, self._keys[shard], args,
                  b"" if settled is None else self._settle_packed(shard, reservation.id, settled))
            for shard in shards
        )  # fmt: skip
        self._retry_any_failed(script, reservation, shards, args, outcomes, what=what, now=now)

    def _retry_any_failed(
        self, script: AsyncScript, reservation: Reservation, shards: list[int], args: list[Any],
        outcomes: list[Any], *, what: str, now: float,
    ) -> None:  # fmt: skip
        """A settle's or release's ``outcomes`` (sent at ``now``): the failed shards retried
        while the reservation lives, the first failure raised; nothing when all landed."""
        if any(isinstance(outcome, BaseException) for outcome in outcomes):
            # Named and timed for its retries only now: once per metered call, the usual
            # answer needs neither (decision 0086).
            ttl_ms = max(1, math.ceil((reservation.expires_at - now) * 1000))
            what = f"{what} of reservation {reservation.id}"
            self._retry_failed(script, shards, args, outcomes, what=what, ttl_ms=ttl_ms)

    @unavailable_on_error
    async def expire(self) -> int:
        expired = await asyncio.gather(*(_send(self._expire, keys, []) for keys in self._keys))
        return len({bytes(one) for ids in expired for one in ids})

    @unavailable_on_error
    async def status(self, scopes: Sequence[Scope]) -> list[BudgetStatus]:
        check_reserve_arguments(scopes, Usage(), 1)
        pairs = [(scope, limit) for scope in scopes for limit in scope.limits]
        by_shard: dict[int, list[int]] = {}
        for index, (scope, _) in enumerate(pairs):
            by_shard.setdefault(self._shard(scope.key()), []).append(index)
        replies = await asyncio.gather(
            *(
                self._status(keys=self._keys[shard], args=[self._bases[shard], *(
                    part for index in indexes
                    for part in (pairs[index][0].key(), pairs[index][1].metric,
                                 pairs[index][1].window)
                )])
                for shard, indexes in by_shard.items()
            )
        )  # fmt: skip
        counts: list[list[int]] = [[] for _ in pairs]
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            numbers = [int(part) for part in reply]
            for position, index in enumerate(indexes):
                counts[index] = numbers[4 * position : 4 * position + 4]
        return [
            _status_of(scope, limit, counts[index]) for index, (scope, limit) in enumerate(pairs)
        ]


def _send(
    script: AsyncScript, keys: list[str], args: list[Any], packed: bytes = b""
) -> Awaitable[Any]:
    """The script's call: on the batching client, straight into this turn's batch as a future
    (so the calls of several shards share one batch, and no task is made for each).
    ``packed``: the call already packed (``BudgetCommands``), or b"" for the batcher to pack."""
    if isinstance(script, BatchedScript):
        return script.registered_client.batcher.queue(script, keys, args, packed)
    return script(keys=keys, args=args)


class _Plan:
    """How a reserve of one tuple of scopes goes out: the shards it touches (in order of first
    use), each shard's ``[scope key, metric, window, limit]`` arguments in contract order and,
    for a batcher that writes packed calls, each shard's command packed but for the id, TTL
    and amounts (``BudgetCommands.reserve_template``; none without ``BudgetCommands``)."""

    __slots__ = ("limits", "rolls", "scopes", "shards", "templates")

    def __init__(
        self, scopes: Sequence[Scope], shards: list[int], limits: dict[int, list[Any]],
        templates: dict[int, Template | None], rolls: dict[int, Template | None],
    ) -> None:  # fmt: skip
        self.scopes, self.shards, self.limits, self.templates = scopes, shards, limits, templates
        self.rolls = rolls  # a one-shard plan's roll (``BudgetCommands.roll_template``)


def _commands_for(
    reserve: AsyncScript, settle: AsyncScript, roll: AsyncScript, keys: list[list[str]],
    bases: list[str],
) -> BudgetCommands | None:  # fmt: skip
    """The reserve, settle and roll packed in parts once (decision 0097), when the client's
    batcher writes packed calls and its encoder packs text as hiredis does (UTF-8, strict)."""
    if not (
        isinstance(reserve, BatchedScript)
        and isinstance(settle, BatchedScript)
        and isinstance(roll, BatchedScript)
    ):
        return None
    encoder = reserve.registered_client.get_encoder()
    native = encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
    if not (native and reserve.registered_client.batcher.writes_packed):
        return None
    return BudgetCommands(
        encoder, keys, bases, reserve_sha=reserve.sha, settle_sha=settle.sha, roll_sha=roll.sha
    )


async def _together(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Each call's reply or exception; several wait together (sent in one batch: one round trip
    per node), a lone one is awaited as it is."""
    pending = calls if type(calls) is list else list(calls)
    if len(pending) == 1:
        try:
            return [await pending[0]]
        except Exception as exc:
            return [exc]
    return await asyncio.gather(*pending, return_exceptions=True)


def _reserved(
    scopes: Sequence[Scope], amounts: Usage, reservation_id: str, reply: list[Any]
) -> Reservation | BudgetRefusal | BaseException:
    """What a one-shard reserve's ``reply`` (budget_reserve.lua's) says."""
    status = int(reply[0])
    if status == 1:
        return Reservation(reservation_id, tuple(scopes), amounts, int(reply[1]) / 1000)
    if status == 0:
        return _refusal(reply)
    return store_error(RedisError("reservation voided before it ran"))


def _refusal(reply: list[Any]) -> BudgetRefusal:
    scope, metric, window, limit, used, reserved = (_text(part) for part in reply[1:])
    return BudgetRefusal(
        scope, _metric(metric), _window(window), int(limit), int(used), int(reserved)
    )


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


def _text(part: bytes | str | int) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


# Script replies are text; these turn them back into the Literal types without a cast.
_METRIC_BY_NAME: dict[str, Metric] = {metric: metric for metric in METRICS}
_WINDOW_BY_NAME: dict[str, Window] = {window: window for window in WINDOWS}


def _metric(name: str) -> Metric:
    return _METRIC_BY_NAME[name]


def _window(name: str) -> Window:
    return _WINDOW_BY_NAME[name]

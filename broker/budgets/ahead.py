"""Calls reserved ahead: a replica keeps a few one-call reservations for each set of budgets its
calls are charged to, so that a call finds its reserve already made and waits for no store round
trip before it is forwarded (decision 0109).

It wraps a ledger whose reserve is a round trip (Redis). Only a reserve of exactly one call
(``Usage(calls=1)``: an A2A send, an MCP tool call) with the configured TTL, for a tuple of
scopes without a task tree's (each tree has its own tuple, mostly used once), is served ahead.
Anything else goes straight to the ledger.

How a set of budgets gets its calls ahead: when a call charged to it ends (settled or released),
one more call is reserved for the next one, in the same event-loop turn, so on Redis the reserve
shares the round trip of the ended call's settle and the task's route claim (decision 0078).
The settle of one call and that reserve are one store call where the ledger has one
(``roll_soon``: one script on Redis, decision 0110). A set holds at most ``most``
calls (taken or on their way); a call that finds none reserves its own, as without this wrapper.

Why no limit is passed, and when a call can be refused early:

* A call reserved ahead is an ordinary reservation in the shared ledger, held atomically
  against every limit, so ``used + reserved <= limit`` holds exactly as before: nothing is ever
  overspent.
* It is reserved only where at least ``headroom`` calls would be left in every calls limit of
  the set after it (the ledger is asked with each calls limit lowered by ``headroom``: a refusal
  there only means "not ahead"). Near a limit, every call reserves its own, exactly as before.
* A call reserved ahead is handed out for at most ``MAX_AGE_S`` after its reserve, and never in
  a later window than the one it was reserved in; then it is released. So a call can only be
  refused while others sit reserved ahead if a set's last ``headroom`` calls go within about
  ``MAX_AGE_S``, and then by at most ``most`` calls per replica.
* A call taken from here and then refused by a later check is released, as any reservation is.
  A replica that dies holds what it reserved ahead until the reservations' TTL reclaims it, as
  it holds the reservations of its calls in flight.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from broker.budgets.model import ONE_CALL, Limit, Scope, Usage, window_end, window_start
from broker.observability import tally
from broker.observability.metrics import budget_calls_reserved
from broker.pipeline.stage import started
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, BudgetStatus, Reservation

log = logging.getLogger("a2a_broker.budget")

# How long after its reserve a call reserved ahead may be handed out (seconds).
MAX_AGE_S: Final = 1.0
# Sets of budgets with calls reserved ahead, at most (callers and targets come from outside).
_SETS_MAX: Final = 4096
# Calls in flight whose end asks for one more, at most.
_OUT_MAX: Final = 65536
_AHEAD, _OWN = budget_calls_reserved.labels("ahead"), budget_calls_reserved.labels("own")


class _Ahead:
    """One set of budgets (a tuple of scopes, by identity): its calls reserved ahead."""

    __slots__ = ("asking", "lowered", "out", "quiet_until", "scopes", "units")

    def __init__(self, scopes: tuple[Scope, ...], headroom: int) -> None:
        self.scopes = scopes  # held, so its id is not reused while this lives
        self.lowered = _lowered(scopes, headroom)
        # (the reservation, the monotonic time until which it may be handed out), oldest first
        self.units: collections.deque[tuple[Reservation, float]] = collections.deque()
        self.asking = 0  # reserves on their way
        self.out = 0  # calls of this set in flight, whose end asks for one more
        self.quiet_until = 0.0  # after a refusal (near a limit) or a failure: none asked before


class ReservingAhead(BudgetLedger):
    """``inner`` with one-call reserves served ahead (see the module doc); every other method
    is ``inner``'s."""

    def __init__(
        self,
        inner: BudgetLedger,
        *,
        most: int,
        headroom: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if most < 1 or headroom < 0:
            raise ValueError("most must be at least 1 and headroom not negative")
        self._inner = inner
        self._most = most
        self._headroom = headroom
        self._ttl_s = ttl_s
        self._clock = clock
        self._sets: dict[int, _Ahead] = {}
        # Tuples of scopes whose calls are never served ahead (a tree's, a limit too small).
        self._passed: dict[int, tuple[Scope, ...]] = {}
        # The reservations handed out (or made by a call that found none), by id: the set to
        # give one more call when each ends.
        self._out: dict[str, _Ahead] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        # Reserves ahead and releases on their way, so that ``close`` can wait for them.
        self._pending: set[asyncio.Future[Any]] = set()

    def held_ahead(self) -> int:
        """Calls reserved ahead and not handed out, or being reserved, over every set."""
        return sum(len(ahead.units) + ahead.asking for ahead in self._sets.values())

    def sets_kept(self) -> int:
        """Sets of budgets this replica keeps calls ahead for (they go once idle)."""
        return len(self._sets)

    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float
    ) -> Reservation | BudgetRefusal:
        ahead = self._ahead_for(scopes, amounts, ttl_s)
        if ahead is None:
            return await self._inner.reserve(scopes, amounts, ttl_s=ttl_s)
        units, now = ahead.units, self._clock()
        while units:
            held, until = units.popleft()
            if now < until:
                self._hand_out(held, ahead)
                tally.add(_AHEAD)  # batched into the counter (decision 0052)
                return held
            self._let_go(held)  # too old, or its window has ended
        tally.add(_OWN)
        held_or_refused = await self._inner.reserve(scopes, amounts, ttl_s=ttl_s)
        if isinstance(held_or_refused, Reservation):
            self._hand_out(held_or_refused, ahead)
        return held_or_refused

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        ahead = self._wants_more(reservation)
        if ahead is not None and actual == ONE_CALL:
            landed: asyncio.Future[BaseException | None] = (
                asyncio.get_running_loop().create_future()
            )

            def settled(failure: BaseException | None) -> None:
                if not landed.done():  # not when this settle was cancelled meanwhile
                    landed.set_result(failure)

            if self._roll(reservation, ahead, settled):
                if (failure := await landed) is not None:
                    raise failure  # what the settle would have raised (it is retried)
                return
        if ahead is not None:
            self._ask(ahead)  # first, so its reserve is queued in this turn with the settle
        await self._inner.settle(reservation, actual)

    def settle_soon(
        self, reservation: Reservation, actual: Usage, done: Callable[[BaseException | None], None]
    ) -> None:
        ahead = self._wants_more(reservation)
        if ahead is not None and actual == ONE_CALL and self._roll(reservation, ahead, done):
            return
        self._inner.settle_soon(reservation, actual, done)
        if ahead is not None:
            self._ask(ahead)

    async def release(self, reservation: Reservation) -> None:
        self._ended(reservation)
        await self._inner.release(reservation)

    async def expire(self) -> int:
        return await self._inner.expire()

    async def status(self, scopes: Sequence[Scope]) -> list[BudgetStatus]:
        return await self._inner.status(scopes)

    async def close(self) -> None:
        """Release every call reserved ahead; from now on none is reserved."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        held = [unit for ahead in self._sets.values() for unit, _ in ahead.units]
        self._sets.clear()
        self._out.clear()
        for unit in held:
            self._let_go(unit)
        while self._pending:  # what is on its way lands (a reserve ahead is then given back)
            await asyncio.gather(*self._pending, return_exceptions=True)

    # --- internals ---------------------------------------------------------------------------

    def _ahead_for(self, scopes: Sequence[Scope], amounts: Usage, ttl_s: float) -> _Ahead | None:
        """The set ``scopes`` is, if its one-call reserves are served ahead; else None."""
        if (
            self._closed
            or amounts != ONE_CALL
            or ttl_s != self._ttl_s
            or not isinstance(scopes, tuple)
            or not scopes
        ):
            return None
        known = self._sets.get(id(scopes))
        if known is not None and known.scopes is scopes:
            return known
        if self._passed.get(id(scopes)) is scopes:
            return None
        if (
            any(scope.kind == "tree" for scope in scopes)
            or not all(type(scope.limits) is tuple for scope in scopes)  # not a fixed tuple
            or _too_small(scopes, self._headroom)
        ):
            if len(self._passed) >= _SETS_MAX:
                self._passed.clear()
            self._passed[id(scopes)] = scopes  # held, so its id is not reused while kept
            return None
        if len(self._sets) >= _SETS_MAX:
            return None
        ahead = self._sets[id(scopes)] = _Ahead(scopes, self._headroom)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(MAX_AGE_S, self._swept)
        return ahead

    def _hand_out(self, held: Reservation, ahead: _Ahead) -> None:
        if len(self._out) < _OUT_MAX:  # else its end asks for none (a leak would be bounded)
            self._out[held.id] = ahead
            ahead.out += 1

    def _ended(self, reservation: Reservation) -> None:
        """A call ended: one more reserved ahead for its set, queued in the running turn."""
        ahead = self._wants_more(reservation)
        if ahead is not None:
            self._ask(ahead)

    def _wants_more(self, reservation: Reservation) -> _Ahead | None:
        """The set to reserve one more call ahead for, now that ``reservation``'s call ended;
        None if none (the call was not one of a set's, the set is full or quiet)."""
        ahead = self._out.pop(reservation.id, None)
        if ahead is None:
            return None
        ahead.out -= 1
        if self._closed or self._sets.get(id(ahead.scopes)) is not ahead:
            return None
        if len(ahead.units) + ahead.asking >= self._most or self._clock() < ahead.quiet_until:
            return None
        return ahead

    def _ask(self, ahead: _Ahead) -> None:
        """Reserve one more call ahead for ``ahead``, queued in the running turn."""
        now = self._clock()
        ahead.asking += 1
        asking = started(self._inner.reserve(ahead.lowered, ONE_CALL, ttl_s=self._ttl_s))
        if asking.done():  # a ledger that answers at once (memory): no turn spent on it
            self._answered(ahead, _outcome(asking), now)
            return
        asking.add_done_callback(lambda done: self._answered(ahead, _outcome(done), now))
        self._keep(asking)

    def _roll(
        self, ended: Reservation, ahead: _Ahead, done: Callable[[BaseException | None], None]
    ) -> bool:
        """Settle ``ended`` (one call) and reserve one more call ahead for ``ahead`` in one
        store call, where the inner ledger has one (``roll_soon``, decision 0110)."""
        now = self._clock()
        landed = asyncio.get_running_loop().create_future()  # for ``close`` to wait on

        def reserved(outcome: Reservation | BudgetRefusal | BaseException) -> None:
            if not landed.done():
                landed.set_result(None)
            self._answered(ahead, outcome, now)

        ahead.asking += 1
        if not self._inner.roll_soon(
            ended, ahead.lowered, ONE_CALL, ttl_s=self._ttl_s, settled=done, reserved=reserved
        ):
            ahead.asking -= 1
            return False
        self._keep(landed)
        return True

    def _answered(
        self, ahead: _Ahead, held: Reservation | BudgetRefusal | BaseException, asked: float
    ) -> None:
        ahead.asking -= 1
        if isinstance(held, BaseException):
            # The store failed (it voids what it may have held): calls reserve their own.
            ahead.quiet_until = self._clock() + MAX_AGE_S
            return
        if isinstance(held, BudgetRefusal):
            # Fewer than ``headroom`` calls left: calls reserve their own for a while.
            ahead.quiet_until = self._clock() + MAX_AGE_S
            return
        if self._closed or self._sets.get(id(ahead.scopes)) is not ahead:
            self._let_go(held)
            return
        ahead.units.append((held, asked + self._usable_for(ahead.scopes, held)))

    def _usable_for(self, scopes: tuple[Scope, ...], held: Reservation) -> float:
        """How long after its reserve ``held`` may be handed out: ``MAX_AGE_S``, or less where
        one of its windows ends sooner (by the ledger's clock, when the reserve ran)."""
        reserved_at = held.expires_at - self._ttl_s
        usable = MAX_AGE_S
        for scope in scopes:
            for limit in scope.limits:
                end = window_end(limit.window, window_start(limit.window, reserved_at))
                if end is not None:
                    usable = min(usable, end - reserved_at)
        return usable

    def _swept(self) -> None:
        """Release the calls reserved ahead that are too old to hand out; forget idle sets."""
        self._sweep = None
        now = self._clock()
        for key, ahead in list(self._sets.items()):
            units = ahead.units
            while units and units[0][1] <= now:
                self._let_go(units.popleft()[0])
            if not units and not ahead.asking and not ahead.out:
                del self._sets[key]
        if self._sets:
            self._sweep = asyncio.get_running_loop().call_later(MAX_AGE_S, self._swept)

    def _let_go(self, held: Reservation) -> None:
        """Release ``held`` in the background (a failed release is retried by the ledger, and
        the reservation's TTL reclaims it in any case)."""
        releasing = started(self._inner.release(held))
        releasing.add_done_callback(_logged)
        self._keep(releasing)

    def _keep(self, pending: asyncio.Future[Any]) -> None:
        if not pending.done():
            self._pending.add(pending)
            pending.add_done_callback(self._pending.discard)


def _too_small(scopes: tuple[Scope, ...], headroom: int) -> bool:
    """Is a calls limit of ``scopes`` at most ``headroom``? (No call is ever reserved ahead.)"""
    return any(
        limit.metric == "calls" and limit.limit <= headroom
        for scope in scopes
        for limit in scope.limits
    )


def _lowered(scopes: tuple[Scope, ...], headroom: int) -> tuple[Scope, ...]:
    """``scopes`` with every calls limit lowered by ``headroom`` (not below 0): a reserve of one
    call against them succeeds only where ``headroom`` calls would still be left."""
    return tuple(
        Scope(
            kind=scope.kind,
            name=scope.name,
            limits=tuple(
                Limit(limit.metric, limit.window, max(0, limit.limit - headroom))
                if limit.metric == "calls"
                else limit
                for limit in scope.limits
            ),
        )
        for scope in scopes
    )


def _outcome(
    done: asyncio.Future[Reservation | BudgetRefusal],
) -> Reservation | BudgetRefusal | BaseException:
    """A reserve's result, or what it raised (a cancelled one: ``CancelledError``)."""
    if done.cancelled():
        return asyncio.CancelledError()
    return done.exception() or done.result()


def _logged(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (failure := done.exception()) is not None:
        log.warning("call reserved ahead not released (its TTL reclaims it): %s", failure)

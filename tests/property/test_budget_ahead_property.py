"""Calls reserved ahead never overspend, and in one process refuse early by at most what they
hold (``broker.budgets.ahead``, decision 0109).

Random histories of one-call reserves, their settles (awaited or not; either rolls the ended
call's settle and the next reserve into one ledger call, decision 0110) and releases, the
passing of time (past ``MAX_AGE_S``), sweeps and event-loop turns, over a memory ledger (so the
clock can be driven), for random limits, headrooms and sizes. After every step: no limit has
``used + reserved`` above it; ``used`` is exactly the calls settled; what is reserved is the
calls in flight plus what is held ahead. A refused call found at most what is held ahead free.
At the end, ``close`` gives back everything held ahead.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.budgets.ahead import ReservingAhead
from broker.budgets.model import Limit, Scope, Usage
from broker.stores.budget_base import Reservation
from broker.stores.memory_budget import MemoryBudgetLedger

ONE = Usage(calls=1)
TTL_S = 600.0

ENDS = st.sampled_from(["settle", "soon", "release"])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("start")),
        st.tuples(st.just("end"), st.integers(0, 50), ENDS),
        st.tuples(st.just("tick"), st.floats(0.0, 1.5)),
        st.tuples(st.just("sweep")),
        st.tuples(st.just("turn")),
    ),
    max_size=80,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 40),
    headroom=st.integers(0, 15),
    most=st.integers(1, 6),
    history=steps,
)
def test_reserving_ahead_never_overspends(
    limit: int, headroom: int, most: int, history: list[tuple[object, ...]]
) -> None:
    asyncio.run(History(limit, headroom, most).run(history))


class History:
    def __init__(self, limit: int, headroom: int, most: int) -> None:
        self.limit = limit
        self.inner, self.clock = MemoryBudgetLedger(), Clock()
        self.ledger = ReservingAhead(
            self.inner, most=most, headroom=headroom, ttl_s=TTL_S, clock=self.clock
        )
        self.scopes = (Scope("agent", "a", (Limit("calls", "lifetime", limit),)),)
        self.inflight: list[Reservation] = []
        self.settled = 0

    async def run(self, history: list[tuple[object, ...]]) -> None:
        for step in history:
            await self.step(step)
            [status] = await self.inner.status(self.scopes)
            assert status.used + status.reserved <= self.limit
            assert status.used == self.settled
            assert status.reserved == len(self.inflight) + self.ledger.held_ahead()
        for one in self.inflight:
            await self.ledger.settle(one, ONE)
            self.settled += 1
        self.inflight.clear()
        await self.ledger.close()
        [status] = await self.inner.status(self.scopes)
        assert (status.used, status.reserved) == (self.settled, 0)

    async def step(self, step: tuple[object, ...]) -> None:
        ledger = self.ledger
        if step[0] == "start":
            result = await ledger.reserve(self.scopes, ONE, ttl_s=TTL_S)
            if isinstance(result, Reservation):
                self.inflight.append(result)
            else:  # refused: at most what is held ahead was free
                [status] = await self.inner.status(self.scopes)
                assert self.limit - status.used - len(self.inflight) <= ledger.held_ahead()
        elif step[0] == "end" and self.inflight:
            await self.end(self.inflight.pop(int(step[1]) % len(self.inflight)), str(step[2]))  # type: ignore[call-overload]
        elif step[0] == "tick":
            self.clock.now += float(step[1])  # type: ignore[arg-type]
        elif step[0] == "sweep":
            ledger._swept()  # the timer's work, at a step of the history's choosing
        elif step[0] == "turn":
            await asyncio.sleep(0)

    async def end(self, one: Reservation, how: str) -> None:
        if how == "release":
            await self.ledger.release(one)
            return
        self.settled += 1
        if how == "settle":
            await self.ledger.settle(one, ONE)
        else:
            self.ledger.settle_soon(one, ONE, lambda failure: None)

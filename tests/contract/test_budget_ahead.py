"""Calls reserved ahead (``broker.budgets.ahead``), over every ledger backend (memory, and a real
Redis in each topology), and over processes sharing one Redis.

What must hold (docs/budgets.md, "Calls reserved ahead"; decision 0109):

* nothing is ever overspent, and in one process a call is refused only when nothing is left
  (a call takes a call reserved ahead before it asks the store);
* a call after the first of a set finds its reserve made: no store call before it goes on;
* near a limit (fewer than ``headroom`` calls left, or a limit of at most ``headroom``) every
  call reserves its own, as without the wrapper;
* a call reserved ahead is handed out for at most ``MAX_AGE_S``, never in a later window, and is
  then given back; an idle set is forgotten; ``close`` gives back everything;
* several processes racing (half their calls ending with an unawaited settle, half with an
  awaited one; both roll into the next call's reserve, decision 0110) never overspend, are
  refused early by at most what the others hold ahead, and once that is given back the last
  calls fit exactly.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable

import pytest

from broker.budgets.ahead import MAX_AGE_S, ReservingAhead
from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.base import Stores
from broker.stores.budget_base import (
    BudgetLedger,
    BudgetRefusal,
    Reservation,
)
from broker.stores.factory import open_backend
from testkit.ledgers import CountingLedger
from testkit.procs import everyone

TTL_S = 600.0
ONE = Usage(calls=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def calls(
    name: str, limit: int, window: str = "lifetime", kind: str = "agent"
) -> tuple[Scope, ...]:
    return (Scope(kind, name, (Limit("calls", window, limit),)),)  # type: ignore[arg-type]


def ahead(
    stores: Stores, most: int = 4, headroom: int = 10, clock: Callable[[], float] | None = None
) -> tuple[ReservingAhead, CountingLedger]:
    counting = CountingLedger(stores.budgets)
    extra = {} if clock is None else {"clock": clock}
    return ReservingAhead(counting, most=most, headroom=headroom, ttl_s=TTL_S, **extra), counting


async def used_reserved(ledger: BudgetLedger, scopes: tuple[Scope, ...]) -> tuple[int, int]:
    [status] = await ledger.status(scopes)
    return status.used, status.reserved


async def one_call(ledger: BudgetLedger, scopes: tuple[Scope, ...]) -> Reservation | BudgetRefusal:
    return await ledger.reserve(scopes, ONE, ttl_s=TTL_S)


async def turns(n: int = 3) -> None:
    """Let what the last call queued (its settle, one more reserved ahead) land."""
    for _ in range(n):
        await asyncio.sleep(0.01)


async def test_a_call_after_the_first_finds_its_reserve_made(stores: Stores) -> None:
    ledger, store = ahead(stores)
    scopes = calls("a", 10_000)
    try:
        first = await one_call(ledger, scopes)
        assert isinstance(first, Reservation) and store.reserves == 1
        await ledger.settle(first, ONE)  # its end reserves one more, ahead (one roll, 0110)
        await turns()
        assert ledger.held_ahead() == 1
        assert await used_reserved(ledger, scopes) == (1, 1)  # the one ahead shows as reserved
        second = await one_call(ledger, scopes)
        assert isinstance(second, Reservation)
        # the one ahead came with the first call's settle: the second call asked the store nothing
        assert (store.reserves, store.rolls) == (1, 1)
        assert ledger.held_ahead() == 0
        ledger.settle_soon(second, ONE, lambda failure: None)
        await turns()
        assert await used_reserved(ledger, scopes) == (2, 1)
    finally:
        await ledger.close()
    assert await used_reserved(stores.budgets, scopes) == (2, 0)  # close gave it back


async def test_in_one_process_exact_at_the_limit_under_concurrency(stores: Stores) -> None:
    """A call takes a call reserved ahead before it asks the store, so within one process a
    refusal means nothing is left: exactly the limit is admitted."""
    headroom, limit = 20, 50
    ledger, _ = ahead(stores, most=6, headroom=headroom)
    scopes = calls("race", limit)
    gate = asyncio.Semaphore(12)  # fewer in flight than the headroom (see the module doc)
    outcomes: list[bool] = []
    over: list[tuple[int, int]] = []

    async def call() -> None:
        async with gate:
            held = await one_call(ledger, scopes)
            outcomes.append(isinstance(held, Reservation))
            if isinstance(held, Reservation):
                used, reserved = await used_reserved(stores.budgets, scopes)
                if used + reserved > limit:
                    over.append((used, reserved))
                await asyncio.sleep(random.uniform(0, 0.003))
                await ledger.settle(held, ONE)

    try:
        await asyncio.gather(*(call() for _ in range(120)))
        await turns()
        assert over == []
        assert outcomes.count(True) == limit
        assert await used_reserved(stores.budgets, scopes) == (limit, 0)
    finally:
        await ledger.close()


async def test_near_a_limit_every_call_reserves_its_own(stores: Stores) -> None:
    ledger, store = ahead(stores, headroom=10)
    small, near = calls("small", 10), calls("near", 14)
    try:
        for _ in range(3):  # a limit of at most the headroom: never ahead
            await ledger.settle(held_(await one_call(ledger, small)), ONE)
            await turns()
        assert store.reserves == 3 and ledger.held_ahead() == 0
        # 14 calls, 10 of headroom: once one more ahead would leave fewer than 10, every call
        # reserves its own, and the last of the 14 fit exactly.
        admitted = 0
        for _ in range(16):
            result = await one_call(ledger, near)
            if isinstance(result, Reservation):
                admitted += 1
                await ledger.settle(result, ONE)
                await turns()
        assert admitted == 14
        assert await used_reserved(stores.budgets, near) == (14, 0)
    finally:
        await ledger.close()


def held_(result: Reservation | BudgetRefusal) -> Reservation:
    assert isinstance(result, Reservation), result
    return result


async def test_a_call_reserved_ahead_is_handed_out_only_while_fresh(stores: Stores) -> None:
    clock = Clock()
    ledger, store = ahead(stores, clock=clock)
    scopes = calls("fresh", 10_000)
    try:
        await ledger.release(held_(await one_call(ledger, scopes)))  # a release asks one more too
        await turns()
        assert ledger.held_ahead() == 1
        clock.now += MAX_AGE_S  # too old now
        stale_then = store.reserves
        call = held_(await one_call(ledger, scopes))
        assert store.reserves == stale_then + 1  # it reserved its own
        await turns()
        assert ledger.held_ahead() == 0
        assert await used_reserved(stores.budgets, scopes) == (0, 1)  # the stale one given back
        await ledger.settle(call, ONE)
    finally:
        await ledger.close()


async def test_what_is_not_used_is_given_back_and_idle_sets_forgotten(stores: Stores) -> None:
    ledger, _ = ahead(stores, most=3)
    scopes = calls("idle", 10_000)
    try:
        held = [held_(await one_call(ledger, scopes)) for _ in range(3)]
        for one in held:
            await ledger.settle(one, ONE)
        await turns()
        assert ledger.held_ahead() == 3  # at most `most`
        assert await used_reserved(stores.budgets, scopes) == (3, 3)
        await asyncio.sleep(2 * MAX_AGE_S + 0.5)  # two sweeps: given back, then forgotten
        assert ledger.held_ahead() == 0 and ledger.sets_kept() == 0
        assert await used_reserved(stores.budgets, scopes) == (3, 0)
    finally:
        await ledger.close()


async def test_close_gives_everything_back_and_ends_reserving_ahead(stores: Stores) -> None:
    ledger, store = ahead(stores)
    scopes = calls("closing", 10_000)
    await ledger.settle(held_(await one_call(ledger, scopes)), ONE)
    await turns()
    assert ledger.held_ahead() == 1
    await ledger.close()
    assert await used_reserved(stores.budgets, scopes) == (1, 0)
    before = store.reserves
    late = held_(await one_call(ledger, scopes))
    await ledger.settle(late, ONE)
    await turns()
    assert store.reserves == before + 1 and ledger.held_ahead() == 0
    assert await used_reserved(stores.budgets, scopes) == (2, 0)


async def test_trees_and_other_amounts_go_straight_to_the_store(stores: Stores) -> None:
    ledger, store = ahead(stores)
    tree = calls("t-1", 10_000, kind="tree")
    agent = calls("other", 10_000)
    try:
        for _ in range(3):
            await ledger.settle(held_(await one_call(ledger, tree)), ONE)
            await turns()
        tokens = Usage(calls=1, tokens_in=5)
        for _ in range(3):
            one = held_(await ledger.reserve(agent, tokens, ttl_s=TTL_S))
            await ledger.settle(one, tokens)
            await turns()
        await ledger.settle(held_(await ledger.reserve(agent, ONE, ttl_s=5.0)), ONE)  # other TTL
        await turns()
        assert store.reserves == 7 and ledger.held_ahead() == 0
    finally:
        await ledger.close()


async def test_a_refusal_ahead_quiets_the_set(stores: Stores) -> None:
    """Fewer than ``headroom`` left behind one more: asked once, then not for a while."""
    ledger, store = ahead(stores, headroom=10)
    scopes = calls("quiet", 11)  # after one call, 10 are left: one ahead would leave 9
    try:
        for _ in range(4):
            await ledger.settle(held_(await one_call(ledger, scopes)), ONE)
            await turns()
        assert (store.reserves, store.rolls) == (4, 1)  # four of their own, one refused ahead
        assert ledger.held_ahead() == 0
        assert await used_reserved(stores.budgets, scopes) == (4, 0)
    finally:
        await ledger.close()


async def test_never_handed_out_in_a_later_window(stores: Stores) -> None:
    """A call reserved 0.3 s before its minute ends is handed out for 0.3 s, not MAX_AGE_S."""
    ledger, _ = ahead(stores)
    scopes = calls("minute", 10_000, window="minute")
    reserved_at = 1_700_000_040 - 0.3  # a minute ends at 1_700_000_040
    held = Reservation("r", scopes, ONE, reserved_at + TTL_S)
    assert ledger._usable_for(scopes, held) == pytest.approx(0.3)
    lifetime = calls("forever", 10_000)
    assert ledger._usable_for(lifetime, held) == MAX_AGE_S
    await ledger.close()


# --- processes sharing one Redis -----------------------------------------------------------------

_AHEAD_IN_A_PROCESS = """
import asyncio, random, sys
from broker.budgets.ahead import ReservingAhead
from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.budget_base import Reservation
from broker.stores.factory import open_backend

SCOPES = (Scope("agent", "shared", (Limit("calls", "lifetime", int(sys.argv[3])),)),)
ONE = Usage(calls=1)

async def main(url, prefix):
    backend = open_backend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))
    ledger = ReservingAhead(backend.stores().budgets, most=8, headroom=20, ttl_s=600.0)
    gate = asyncio.Semaphore(10)
    wait = lambda: asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    admitted = unlanded = 0
    landed = asyncio.Event()

    def ended(failure):
        nonlocal unlanded
        assert failure is None, failure
        unlanded -= 1
        if unlanded == 0:
            landed.set()

    async def call():
        nonlocal admitted, unlanded
        async with gate:
            held = await ledger.reserve(SCOPES, ONE, ttl_s=600.0)
            if isinstance(held, Reservation):
                admitted += 1
                await asyncio.sleep(random.uniform(0, 0.002))
                if random.random() < 0.5:  # a unary answer's settle; else a stream's, awaited
                    unlanded += 1
                    landed.clear()
                    ledger.settle_soon(held, ONE, ended)
                else:
                    await ledger.settle(held, ONE)

    try:
        await backend.ping()
        print("ready", flush=True)
        await wait()
        await asyncio.gather(*(call() for _ in range(150)))
        if unlanded:
            await landed.wait()
        print(admitted, flush=True)
        await wait()
        await ledger.close()
        print("closed", flush=True)
    finally:
        await backend.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_processes_reserving_ahead_never_overspend_and_end_exact(
    redis_url: str, redis_key_prefix: str
) -> None:
    limit, processes_n, most = 300, 3, 8
    argv = [sys.executable, "-c", _AHEAD_IN_A_PROCESS, redis_url, redis_key_prefix, str(limit)]
    pipes = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE}
    processes = [await asyncio.create_subprocess_exec(*argv, **pipes) for _ in range(processes_n)]
    backend = open_backend(
        StoreSettings(backend="redis", redis_url=redis_url, key_prefix=redis_key_prefix)
    )
    ledger = backend.stores().budgets
    scopes = calls("shared", limit)
    try:
        async with asyncio.timeout(90):
            assert await everyone(processes, None) == [b"ready"] * processes_n
            admitted = sum(int(line) for line in await everyone(processes, b"go\n"))
            # 450 asked of 300: never more than fit; refused early by at most what the other
            # processes (and this one's own reserves on their way) held ahead.
            assert limit - processes_n * most <= admitted <= limit
            used, reserved = await used_reserved(ledger, scopes)
            assert used == admitted and used + reserved <= limit
            assert await everyone(processes, b"close\n") == [b"closed"] * processes_n
            for process in processes:
                await process.wait()
        assert await used_reserved(ledger, scopes) == (admitted, 0)  # everything given back
        more = 0  # the rest fits exactly
        while isinstance(result := await ledger.reserve(scopes, ONE, ttl_s=TTL_S), Reservation):
            await ledger.settle(result, ONE)
            more += 1
        assert admitted + more == limit
        assert await used_reserved(ledger, scopes) == (limit, 0)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await backend.close()
    assert [process.returncode for process in processes] == [0] * processes_n


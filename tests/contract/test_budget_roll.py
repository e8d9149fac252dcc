"""A call's settle and the next call's reserve in one store call (``BudgetLedger.roll_soon``,
decision 0110), over every ledger backend (memory, and a real Redis in each topology).

What must hold: a roll is exactly a settle of the ended reservation followed by a reserve of
the same amounts, atomically. The ended call is charged once (a roll of a reservation that had
ended already charges nothing more); the new reservation is held against the limits passed to
the roll, or refused naming the first limit hit, with the settle done either way. Where the
store cannot do it in one call (budgets over several shards) the roll says so and does nothing.
Should the reply be lost, the settle is retried alone and the new id voided, so whichever way
the lost roll went, the call is charged once and nothing stays held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
import pytest

from broker.budgets.ahead import ReservingAhead
from broker.budgets.model import Limit, Scope, Usage
from broker.errors import StoreUnavailableError
from broker.settings import StoreSettings
from broker.stores.base import StoreBackend, Stores
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.stores.factory import open_backend
from broker.stores.memory import MemoryBackend
from broker.stores.redis_budget import RedisBudgetLedger
from testkit.ledgers import CountingLedger
from testkit.redis_process import REDIS_MODES, RedisMode

ONE = Usage(calls=1)
TTL_S = 600.0
Outcome = Reservation | BudgetRefusal | BaseException


def calls(name: str, limit: int) -> tuple[Scope, ...]:
    return (
        Scope("agent", name, (Limit("calls", "lifetime", limit), Limit("calls", "day", limit))),
        Scope("edge", f"{name}>b", (Limit("calls", "hour", limit),)),
    )


async def used_reserved(ledger: BudgetLedger, scopes: tuple[Scope, ...]) -> set[tuple[int, int]]:
    return {(status.used, status.reserved) for status in await ledger.status(scopes)}


async def rolled(
    ledger: BudgetLedger, ended: Reservation, scopes: tuple[Scope, ...]
) -> tuple[BaseException | None, Outcome]:
    """``roll_soon``'s two reports, in the order they came."""
    told: list[object] = []
    both = asyncio.Event()

    def settled(failure: BaseException | None) -> None:
        told.append(failure)

    def reserved(outcome: Outcome) -> None:
        told.append(outcome)
        both.set()

    assert ledger.roll_soon(ended, scopes, ONE, ttl_s=TTL_S, settled=settled, reserved=reserved)
    async with asyncio.timeout(5):
        await both.wait()
    await asyncio.sleep(0.01)  # each told once: nothing more comes
    assert len(told) == 2
    failure, outcome = told
    assert failure is None or isinstance(failure, BaseException)
    assert isinstance(outcome, Reservation | BudgetRefusal | BaseException)
    return failure, outcome


async def held(ledger: BudgetLedger, scopes: tuple[Scope, ...]) -> Reservation:
    result = await ledger.reserve(scopes, ONE, ttl_s=TTL_S)
    assert isinstance(result, Reservation)
    return result


async def test_a_roll_charges_the_ended_call_and_holds_the_next(stores: Stores) -> None:
    ledger, scopes = stores.budgets, calls("roll", 100)
    first = await held(ledger, scopes)
    failure, second = await rolled(ledger, first, scopes)
    assert failure is None
    assert isinstance(second, Reservation)
    assert second.id != first.id and second.scopes == scopes and second.amounts == ONE
    assert second.expires_at > time.time() + TTL_S - 60
    assert await used_reserved(ledger, scopes) == {(1, 1)}
    await ledger.settle(first, ONE)  # ended by the roll: nothing changes
    assert await used_reserved(ledger, scopes) == {(1, 1)}
    failure, third = await rolled(ledger, second, scopes)
    assert failure is None and isinstance(third, Reservation)
    await ledger.settle(third, ONE)
    assert await used_reserved(ledger, scopes) == {(3, 0)}


async def test_a_roll_finding_no_room_settles_and_refuses(stores: Stores) -> None:
    ledger, scopes = stores.budgets, calls("full", 2)
    first, other = await held(ledger, scopes), await held(ledger, scopes)
    failure, refused = await rolled(ledger, first, scopes)
    assert failure is None
    assert isinstance(refused, BudgetRefusal)
    assert (refused.scope, refused.metric, refused.window) == ("agent:full", "calls", "lifetime")
    assert (refused.limit, refused.used, refused.reserved) == (2, 1, 1)
    assert await used_reserved(ledger, scopes) == {(1, 1)}  # settled; nothing more held
    await ledger.settle(other, ONE)
    assert await used_reserved(ledger, scopes) == {(2, 0)}


async def test_a_roll_holds_against_the_limits_it_is_given(stores: Stores) -> None:
    """Calls reserved ahead roll against their set's limits lowered by the headroom: the same
    counters, other limits."""
    ledger, scopes = stores.budgets, calls("lowered", 10)
    lowered = calls("lowered", 1)
    first = await held(ledger, scopes)
    failure, refused = await rolled(ledger, first, lowered)
    assert failure is None and isinstance(refused, BudgetRefusal)
    assert refused.limit == 1 and refused.used == 1
    failure, more = await rolled(ledger, await held(ledger, scopes), scopes)
    assert failure is None and isinstance(more, Reservation)
    assert await used_reserved(ledger, scopes) == {(2, 1)}


async def test_a_roll_of_an_ended_reservation_charges_nothing_more(stores: Stores) -> None:
    ledger, scopes = stores.budgets, calls("ended", 100)
    first = await held(ledger, scopes)
    await ledger.settle(first, ONE)
    failure, second = await rolled(ledger, first, scopes)
    assert failure is None and isinstance(second, Reservation)
    assert await used_reserved(ledger, scopes) == {(1, 1)}
    await ledger.release(second)
    assert await used_reserved(ledger, scopes) == {(1, 0)}


async def test_calls_reserved_ahead_roll_one_into_the_next(stores: Stores) -> None:
    """The end of a call (``settle_soon``) settles it and reserves the set's next call in one
    store call: after the first call, no call reserves on its own; counters stay exact."""
    counting = CountingLedger(stores.budgets)
    ledger = ReservingAhead(counting, most=2, headroom=5, ttl_s=TTL_S)
    scopes = calls("ahead", 1_000)
    loop = asyncio.get_running_loop()
    try:
        for n in range(1, 21):
            call = await ledger.reserve(scopes, ONE, ttl_s=TTL_S)
            assert isinstance(call, Reservation)
            landed: asyncio.Future[BaseException | None] = loop.create_future()
            ledger.settle_soon(call, ONE, landed.set_result)
            async with asyncio.timeout(5):
                assert await landed is None
            await asyncio.sleep(0.01)  # the call it reserved ahead is held
            assert ledger.held_ahead() == 1
            assert await used_reserved(stores.budgets, scopes) == {(n, 1)}
        assert (counting.reserves, counting.rolls) == (1, 20)
    finally:
        await ledger.close()
    assert await used_reserved(stores.budgets, scopes) == {(20, 0)}


@pytest.fixture(params=list(REDIS_MODES))
def redis_settings(request: pytest.FixtureRequest) -> StoreSettings:
    make: Callable[[RedisMode], StoreSettings] = request.getfixturevalue("redis_store_settings")
    return make(REDIS_MODES[request.param])


OpenLedger = Callable[[StoreSettings, int], RedisBudgetLedger]


@pytest.fixture
async def redis_ledger() -> AsyncIterator[OpenLedger]:
    """Opens the Redis ledger of some settings with ``budget_shards`` set; closed after."""
    opened: list[StoreBackend] = []

    def open_one(settings: StoreSettings, shards: int) -> RedisBudgetLedger:
        backend = open_backend(msgspec.structs.replace(settings, budget_shards=shards))
        opened.append(backend)
        ledger = backend.stores().budgets
        assert isinstance(ledger, RedisBudgetLedger)
        return ledger

    yield open_one
    for backend in opened:
        await backend.close()


async def test_budgets_over_several_shards_do_not_roll(
    redis_settings: StoreSettings, redis_ledger: OpenLedger
) -> None:
    ledger = redis_ledger(redis_settings, 16)
    scopes = tuple(Scope("agent", f"a{n}", (Limit("calls", "day", 9),)) for n in range(6))
    first = await held(ledger, scopes)
    told: list[object] = []
    assert not ledger.roll_soon(first, scopes, ONE, ttl_s=TTL_S, settled=told.append,
                                reserved=told.append)  # fmt: skip
    await asyncio.sleep(0.05)
    assert told == []
    assert await used_reserved(ledger, scopes) == {(0, 1)}  # nothing done
    await ledger.release(first)


class _Late:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, attempt: object, *, until: float, what: str) -> None:
        self.added.append(what)


async def test_a_roll_redis_does_not_answer_settles_alone_and_voids_the_new_id(
    unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch, redis_ledger: OpenLedger
) -> None:
    down = StoreSettings(
        backend="redis", redis_url=f"redis://127.0.0.1:{unused_tcp_port}/0", key_prefix="p"
    )
    ledger = redis_ledger(down, 1)
    late = _Late()
    monkeypatch.setattr(ledger, "_late", late)
    scopes = calls("down", 10)
    ended = Reservation("r1", scopes, ONE, time.time() + 30)
    failure, outcome = await rolled(ledger, ended, scopes)
    assert isinstance(failure, StoreUnavailableError)
    assert outcome is failure
    assert late.added[0] == "settle of reservation r1 on budget shard 0"
    assert len(late.added) == 2 and late.added[1].startswith("void of reservation ")


async def test_after_a_lost_roll_reply_the_retries_leave_one_charge_either_way(
    redis_settings: StoreSettings, redis_ledger: OpenLedger
) -> None:
    """What the broker does when a roll's reply is lost (settle the ended id, void the new
    one), after a roll that ran, and before one that a stalled Redis runs only later."""
    ledger, scopes = redis_ledger(redis_settings, 1), calls("lost", 100)
    keys, base = ledger._keys[0], ledger._bases[0]

    async def void(reservation_id: str) -> None:
        await ledger._void(keys=keys, args=[base, reservation_id, 30_000])

    ran = await held(ledger, scopes)
    _, second = await rolled(ledger, ran, scopes)
    assert isinstance(second, Reservation)
    await ledger.settle(ran, ONE)  # the settle retried
    await void(second.id)
    assert await used_reserved(ledger, scopes) == {(1, 0)}

    late = await held(ledger, scopes)
    await ledger.settle(late, ONE)  # the roll has not run: the retried settle charges the call
    await void("r-late")
    limits = ledger._plan(scopes).limits[0]
    reply = await ledger._roll(keys=keys, args=[base, "r-late", 30_000, 1, 0, 0, 0, late.id,
                                                *limits])  # fmt: skip
    assert [int(reply[0]), [int(part) for part in reply[1]]] == [0, [2]]  # it changes nothing
    assert await used_reserved(ledger, scopes) == {(2, 0)}


async def test_an_awaited_settle_rolls_too(stores: Stores) -> None:
    """A stream's settle is awaited: it rolls into the next call's reserve as well."""
    counting = CountingLedger(stores.budgets)
    ledger = ReservingAhead(counting, most=2, headroom=5, ttl_s=TTL_S)
    scopes = calls("awaited", 1_000)
    try:
        first = await ledger.reserve(scopes, ONE, ttl_s=TTL_S)
        assert isinstance(first, Reservation)
        await ledger.settle(first, ONE)
        await asyncio.sleep(0.01)
        assert (counting.reserves, counting.rolls, ledger.held_ahead()) == (1, 1, 1)
        assert await used_reserved(stores.budgets, scopes) == {(1, 1)}
    finally:
        await ledger.close()
    assert await used_reserved(stores.budgets, scopes) == {(1, 0)}


class _RollsFail(CountingLedger):
    """A real ledger whose rolls fail as a store that does not answer fails them."""

    def roll_soon(
        self, ended: Reservation, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float,
        settled: Callable[[BaseException | None], None], reserved: Callable[[Outcome], None],
    ) -> bool:  # fmt: skip
        self.rolls += 1
        failure = StoreUnavailableError(detail="ConnectionError: down")
        settled(failure)
        reserved(failure)
        return True


async def test_an_awaited_settle_raises_what_its_roll_failed_with() -> None:
    counting = _RollsFail(MemoryBackend().stores().budgets)
    ledger = ReservingAhead(counting, most=2, headroom=5, ttl_s=TTL_S)
    scopes = calls("failing", 1_000)
    try:
        first = await ledger.reserve(scopes, ONE, ttl_s=TTL_S)
        assert isinstance(first, Reservation)
        with pytest.raises(StoreUnavailableError):
            await ledger.settle(first, ONE)
        assert ledger.held_ahead() == 0  # the set is quiet a while: calls reserve their own
        second = await ledger.reserve(scopes, ONE, ttl_s=TTL_S)
        assert isinstance(second, Reservation) and counting.reserves == 2
    finally:
        await ledger.close()


async def test_a_settle_cancelled_while_its_roll_is_out_disturbs_nothing(
    redis_settings: StoreSettings, redis_ledger: OpenLedger
) -> None:
    """The caller of an awaited settle goes away (cancelled) before Redis answers: the roll
    still lands, and its late report reaches no cancelled future."""
    ledger = ReservingAhead(redis_ledger(redis_settings, 1), most=2, headroom=5, ttl_s=TTL_S)
    scopes = calls("cancelled", 1_000)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        first = await ledger.reserve(scopes, ONE, ttl_s=TTL_S)
        assert isinstance(first, Reservation)
        settling = asyncio.ensure_future(ledger.settle(first, ONE))
        await asyncio.sleep(0)  # the roll is queued, the settle waits for its reply
        settling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await settling
        for _ in range(50):
            if ledger.held_ahead() == 1:
                break
            await asyncio.sleep(0.01)
        assert ledger.held_ahead() == 1
        assert await used_reserved(ledger, scopes) == {(1, 1)}
        assert reported == []
    finally:
        loop.set_exception_handler(None)
        async with asyncio.timeout(5):  # a roll never reported would keep close waiting
            await ledger.close()

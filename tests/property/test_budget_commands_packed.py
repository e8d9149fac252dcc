"""The budget reserve, settle and roll (decision 0110) packed in parts once (decision 0097)
send, byte for byte, what the batcher would have packed from the whole command, for any scopes,
limits, shards, ids, TTLs and amounts; what the fast way cannot pack exactly is left to the
batcher. A change of limits is never sent from a stale part: every metered call's packed bytes
are checked against its arguments on a real server while the limits are overridden."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.budgets.model import MAX_AMOUNT, METRICS, WINDOWS, Limit, Scope, Usage
from broker.budgets.scopes import ConfiguredScopes
from broker.settings import BudgetLimitSettings, BudgetSettings, StoreSettings
from broker.stores.budget_base import BudgetRefusal, Reservation
from broker.stores.redis import RedisBackend
from broker.stores.redis_batch import BatchingRedis, _Call, _LinkBatcher, _Notify
from broker.stores.redis_budget import RedisBudgetLedger
from broker.stores.redis_wire import pack

# The client is never connected: only its encoder, scripts and batcher's packing are used.
CLIENT = BatchingRedis(host="127.0.0.1", port=1)

amount = st.integers(0, MAX_AMOUNT)
limits = st.lists(
    st.builds(Limit, st.sampled_from(METRICS), st.sampled_from(WINDOWS), amount),
    max_size=4,
    unique_by=lambda limit: (limit.metric, limit.window),
).map(tuple)
kinds = st.sampled_from(["agent", "team", "tree", "edge", "tool"])
scope_tuples = st.lists(
    st.builds(Scope, kinds, st.text(max_size=12), limits),
    max_size=4,
    unique_by=Scope.key,
).map(tuple)
ids = st.text(min_size=1, max_size=40)
numbers = st.tuples(amount, amount, amount, amount, amount)


def _batcher_packs(ledger: RedisBudgetLedger, script: Any, shard: int, args: list[Any]) -> Any:
    """What the batcher makes of the whole call: its bytes, or the error its caller gets."""
    told: list[Any] = []
    call = _Call(script, ledger._keys[shard], tuple(args), _Notify(told.append))
    return call.packed if CLIENT.batcher._prepare(call) else told[0]


@settings(max_examples=300, deadline=None)
@given(scopes=scope_tuples, shards=st.integers(1, 4), rid=ids, ended=ids, numbers=numbers)
def test_a_reserve_a_settle_and_a_roll_packed_in_parts_are_the_batchers_bytes(
    scopes: tuple[Scope, ...], shards: int, rid: str, ended: str, numbers: tuple[int, ...]
) -> None:
    ledger = RedisBudgetLedger(CLIENT, "p:x", shards=shards)
    commands = ledger._commands
    assert commands is not None
    plan = ledger._plan(scopes)
    for shard in plan.shards:
        args = [ledger._bases[shard], rid, *numbers, *plan.limits[shard]]
        packed = commands.reserve(plan.templates[shard], rid, numbers)
        assert packed == _batcher_packs(ledger, ledger._reserve, shard, args)
        settled = commands.settle(shard, rid, numbers[1:])
        assert settled == _batcher_packs(ledger, ledger._settle, shard, [rid, *numbers[1:]])
    if len(plan.shards) == 1:  # a roll goes out only for one shard
        (shard,) = plan.shards
        args = [ledger._bases[shard], rid, *numbers, ended, *plan.limits[shard]]
        rolled = commands.roll(plan.rolls[shard], rid, numbers, ended)
        assert rolled == _batcher_packs(ledger, ledger._roll, shard, args)


odd = st.one_of(st.booleans(), st.binary(max_size=4), st.just(1.5), amount)
odd_text = st.one_of(st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010)), ids)


@settings(max_examples=300, deadline=None)
@given(
    name=odd_text,
    limit=odd,
    rid=st.one_of(odd_text, st.binary(max_size=4), st.integers()),
    ended=st.one_of(odd_text, st.binary(max_size=4), st.integers()),
    numbers=st.tuples(odd, odd, odd, odd, odd),
)
def test_what_the_fast_way_cannot_pack_exactly_is_left_to_the_batcher(
    name: str, limit: Any, rid: Any, ended: Any, numbers: tuple[Any, ...]
) -> None:
    # Lone surrogates, bools, bytes and floats: the batcher packs (or refuses) these itself.
    ledger = RedisBudgetLedger(CLIENT, "p:x")
    commands = ledger._commands
    assert commands is not None
    plan = ledger._plan((Scope("agent", name, (Limit("calls", "day", limit),)),))
    args = [ledger._bases[0], rid, *numbers, *plan.limits[0]]
    packed = commands.reserve(plan.templates[0], rid, numbers)
    assert packed in (b"", _batcher_packs(ledger, ledger._reserve, 0, args))
    settled = commands.settle(0, rid, numbers[1:])
    assert settled in (b"", _batcher_packs(ledger, ledger._settle, 0, [rid, *numbers[1:]]))
    rolled = commands.roll(plan.rolls[0], rid, numbers, ended)
    roll_args = [ledger._bases[0], rid, *numbers, ended, *plan.limits[0]]
    assert rolled in (b"", _batcher_packs(ledger, ledger._roll, 0, roll_args))


def test_the_runs_of_numbers_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.stores.redis_budget_wire._NUMBERS_MAX", 3)
    commands = RedisBudgetLedger(CLIENT, "p:x")._commands
    assert commands is not None
    for calls in range(10):
        assert commands.settle(0, "r", (calls, 0, 0, 0))
    assert len(commands._numbers) <= 3


async def test_a_change_of_limits_is_sent_as_changed(
    redis_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = BudgetSettings(
        agents={"a": (BudgetLimitSettings(metric="calls", window="day", limit=2),)}
    )
    backend = RedisBackend(
        StoreSettings(backend="redis", redis_url=redis_url, key_prefix=redis_key_prefix)
    )
    stores = backend.stores()
    now = [0.0]
    scopes = ConfiguredScopes(budgets, stores.budget_limits, clock=lambda: now[0])
    ledger = stores.budgets
    written: list[tuple[bytes, bytes]] = []  # (packed by the ledger, pack of the whole call)
    original = _LinkBatcher._prepare

    def checked(self: _LinkBatcher, call: _Call) -> bool:
        if call.packed:  # queued packed: by the ledger, from its parts packed once
            whole = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            written.append((call.packed, pack(CLIENT.get_encoder(), whole)))
        return original(self, call)

    awaited = itertools.cycle([False, True])

    async def reserve_and_settle() -> bool:
        await scopes.refresh()
        held = await ledger.reserve(scopes.for_call("a", (), None, "b"), Usage(calls=1), ttl_s=30)
        if isinstance(held, BudgetRefusal):
            return False
        assert isinstance(held, Reservation)
        if next(awaited):  # the awaited settle (a streamed answer's), or the unary answer's
            await ledger.settle(held, Usage(calls=1))
            return True
        landed = asyncio.get_running_loop().create_future()
        ledger.settle_soon(held, Usage(calls=1), landed.set_result)
        assert await landed is None
        return True

    monkeypatch.setattr(_LinkBatcher, "_prepare", checked)
    try:
        assert [await reserve_and_settle() for _ in range(3)] == [True, True, False]
        await stores.budget_limits.put("agent:a", (Limit("calls", "day", 4),))
        now[0] += 60  # the next refresh reads the override
        assert [await reserve_and_settle() for _ in range(3)] == [True, True, False]
        await stores.budget_limits.put("agent:a", (Limit("calls", "day", 3),))
        now[0] += 60
        assert await reserve_and_settle() is False  # 4 used, the new limit 3
    finally:
        await backend.close()
    assert all(packed == whole for packed, whole in written)
    settles = [packed for packed, _ in written if packed.startswith(b"*10\r\n")]
    assert len(settles) == 4  # every settle packed by the ledger, awaited or not
    limits_sent = [packed.rsplit(b"\r\n", 2)[1] for packed, _ in written if b"day" in packed]
    assert limits_sent == [b"2"] * 3 + [b"4"] * 3 + [b"3"]

"""The budget ledger and rate limiter contract, on every backend (memory and a real Redis).

Limits must hold exactly, also under concurrency and, on Redis, across processes. Window
roll-over is driven by an injected clock on the memory ledger; on Redis (whose clock cannot be
patched) the scripts' window arithmetic is compared with ``broker.budgets.model`` directly.

Every contract test also runs with the budgets spread over four shards (``[store]
budget_shards = 4``) on standalone Redis and on the cluster, where the scopes of one reserve
land on different shards (and nodes). Which guarantee holds there:

- **never over a limit**, always: each shard checks and holds its own limits atomically;
- **exactly at the limit when reserves do not race across shards**: every test below but the
  cross-process race passes unchanged with shards, concurrency within one broker included (its
  calls of one turn reach each node in the same order, so a shard never refuses one reserve
  while another holds what the first needed elsewhere);
- across processes racing over several shards, fewer may be admitted than fit
  (``test_processes_racing_across_shards_never_overspend``).
"""

from __future__ import annotations

import asyncio
import calendar
import sys
import time
from collections.abc import Callable

import msgspec
import pytest
import redis
from redis.crc import key_slot

from broker.budgets.model import (
    METRICS,
    WINDOWS,
    Limit,
    Metric,
    Scope,
    Usage,
    Window,
    window_end,
    window_start,
)
from broker.errors import StoreUnavailableError
from broker.settings import StoreSettings
from broker.stores.base import StoreBackend, Stores
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, BudgetStatus, Reservation
from broker.stores.factory import open_backend
from broker.stores.memory_budget import MemoryBudgetLedger
from broker.stores.redis_budget import budget_script, budget_shard_of
from testkit.procs import everyone
from testkit.redis_process import REDIS_MODES, RedisMode

LONG_S = 600
SHARDS = 4
# Redis backends with the budgets over SHARDS shards, beside conftest's (one shard).
SHARDED: dict[str, RedisMode] = {
    "redis-4-shards": "standalone",
    "redis-cluster-4-shards": "cluster",
}


# A test that reads a minute/hour/day/month window's counts after changing them would read a
# fresh window if the clock crossed a boundary in between (a new minute starts every 60 s;
# every other window starts with one): such tests start at least this far from the next one.
WINDOW_MARGIN_S = 10.0


@pytest.fixture
async def clear_of_a_window_boundary() -> None:
    """Wait, if need be, until the next minute starts (at most WINDOW_MARGIN_S)."""
    left = 60.0 - time.time() % 60.0
    if left < WINDOW_MARGIN_S:
        await asyncio.sleep(left + 0.05)


@pytest.fixture(params=["memory", *REDIS_MODES, *SHARDED])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    """conftest's backends, and the sharded ones."""
    if request.param == "memory":
        return StoreSettings(backend="memory")
    make: Callable[[RedisMode], StoreSettings] = request.getfixturevalue("redis_store_settings")
    if request.param in SHARDED:
        return msgspec.structs.replace(make(SHARDED[request.param]), budget_shards=SHARDS)
    return make(REDIS_MODES[request.param])


def scope(name: str = "planner", *limits: Limit, kind: str = "agent") -> Scope:
    return Scope(kind, name, tuple(limits))  # type: ignore[arg-type]


def held(result: Reservation | BudgetRefusal) -> Reservation:
    assert isinstance(result, Reservation), result
    return result


async def reserve(
    ledger: BudgetLedger, scopes: list[Scope], amounts: Usage, ttl_s: float = LONG_S
) -> Reservation | BudgetRefusal:
    return await ledger.reserve(scopes, amounts, ttl_s=ttl_s)


async def counts(ledger: BudgetLedger, scopes: list[Scope]) -> list[tuple[int, int, int]]:
    """(used, reserved, remaining) of each limit."""
    return [(s.used, s.reserved, s.remaining) for s in await ledger.status(scopes)]


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("window", WINDOWS)
async def test_each_metric_and_window_admits_exactly_its_limit(
    stores: Stores, metric: Metric, window: Window
) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit(metric, window, 10))
    three = Usage(**{metric: 3})
    for _ in range(3):
        held(await reserve(ledger, [budget], three))
    refusal = await reserve(ledger, [budget], three)
    assert refusal == BudgetRefusal("agent:a", metric, window, 10, 0, 9)
    held(await reserve(ledger, [budget], Usage(**{metric: 1})))  # exactly up to the limit
    other = next(m for m in METRICS if m != metric)
    held(await reserve(ledger, [budget], Usage(**{other: 1000})))  # other metrics are free
    [status] = await ledger.status([budget])
    assert status == BudgetStatus(
        "agent:a", metric, window, 10, 0, 10, 0, window_start(window, time.time())
    )


async def test_a_limit_of_zero_allows_nothing_but_zero(stores: Stores) -> None:
    budget = scope("a", Limit("calls", "day", 0))
    assert isinstance(await reserve(stores.budgets, [budget], Usage(calls=1)), BudgetRefusal)
    held(await reserve(stores.budgets, [budget], Usage(tokens_in=5)))


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_multi_scope_refusal_names_the_first_limit_hit_and_changes_nothing(
    stores: Stores,
) -> None:
    ledger = stores.budgets
    agent = scope("planner", Limit("calls", "minute", 100), Limit("cost_micro", "day", 1000))
    team = scope("role:user", Limit("cost_micro", "month", 500), kind="team")
    edge = scope("planner>researcher", Limit("tokens_out", "lifetime", 50), kind="edge")
    scopes = [agent, team, edge]
    held(await reserve(ledger, scopes, Usage(calls=1, cost_micro=400, tokens_out=10)))
    before = await counts(ledger, scopes)
    # Both the team's and the edge's limits would be exceeded: the team comes first.
    refusal = await reserve(ledger, scopes, Usage(calls=1, cost_micro=200, tokens_out=45))
    assert refusal == BudgetRefusal("team:role:user", "cost_micro", "month", 500, 0, 400)
    refusal = await reserve(ledger, scopes, Usage(calls=1, cost_micro=100, tokens_out=45))
    assert refusal == BudgetRefusal("edge:planner>researcher", "tokens_out", "lifetime", 50, 0, 10)
    assert await counts(ledger, scopes) == before
    assert before == [(0, 1, 99), (0, 400, 600), (0, 400, 100), (0, 10, 40)]


async def test_scopes_with_look_alike_names_are_kept_apart(stores: Stores) -> None:
    ledger = stores.budgets
    limit = Limit("calls", "lifetime", 1)
    names = [("agent", "a:b"), ("agent", "a"), ("team", "a:b"), ("edge", "a>b"), ("tree", "")]
    scopes = [scope(name, limit, kind=kind) for kind, name in names]
    for one in scopes:
        held(await reserve(ledger, [one], Usage(calls=1)))
    assert await counts(ledger, scopes) == [(0, 1, 0)] * len(scopes)


# --- settle, release, idempotency ----------------------------------------------------------------


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_settle_moves_reserved_to_used_and_frees_the_rest(stores: Stores) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit("tokens_out", "hour", 100), Limit("calls", "day", 5))
    reservation = held(await reserve(ledger, [budget], Usage(calls=1, tokens_out=80)))
    assert await counts(ledger, [budget]) == [(0, 80, 20), (0, 1, 4)]
    await ledger.settle(reservation, Usage(calls=1, tokens_out=30))
    assert await counts(ledger, [budget]) == [(30, 0, 70), (1, 0, 4)]
    held(await reserve(ledger, [budget], Usage(tokens_out=70)))


async def test_spend_beyond_the_reservation_is_overage_never_used(stores: Stores) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit("cost_micro", "lifetime", 100))
    first = held(await reserve(ledger, [budget], Usage(cost_micro=60)))
    held(await reserve(ledger, [budget], Usage(cost_micro=40)))
    await ledger.settle(first, Usage(cost_micro=75))
    [status] = await ledger.status([budget])
    assert (status.used, status.reserved, status.remaining, status.overage) == (60, 40, 0, 15)


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_release_frees_everything(stores: Stores) -> None:
    ledger = stores.budgets
    scopes = [scope("a", Limit("calls", "minute", 1)), scope("t1", Limit("calls", "day", 1))]
    reservation = held(await reserve(ledger, scopes, Usage(calls=1)))
    assert isinstance(await reserve(ledger, scopes, Usage(calls=1)), BudgetRefusal)
    await ledger.release(reservation)
    assert await counts(ledger, scopes) == [(0, 0, 1), (0, 0, 1)]
    held(await reserve(ledger, scopes, Usage(calls=1)))


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_limits_a_call_does_not_touch_end_cleanly(stores: Stores) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit("calls", "day", 1), Limit("tokens_out", "day", 1))
    released = held(await reserve(ledger, [budget], Usage(tokens_out=1)))
    settled = held(await reserve(ledger, [budget], Usage(calls=1)))
    await ledger.release(released)
    await ledger.settle(settled, Usage(calls=1))
    assert await counts(ledger, [budget]) == [(1, 0, 0), (0, 0, 1)]


async def test_ending_a_reservation_twice_changes_nothing(stores: Stores) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit("calls", "lifetime", 10))
    settled = held(await reserve(ledger, [budget], Usage(calls=4)))
    released = held(await reserve(ledger, [budget], Usage(calls=3)))
    await ledger.settle(settled, Usage(calls=2))
    await ledger.release(released)
    after = await counts(ledger, [budget])
    for _ in range(2):
        await ledger.settle(settled, Usage(calls=2))
        await ledger.release(settled)
        await ledger.settle(released, Usage(calls=3))
        await ledger.release(released)
    unknown = Reservation("nope", (budget,), Usage(calls=1), time.time() + LONG_S)
    await ledger.settle(unknown, Usage(calls=1))
    await ledger.release(unknown)
    assert await counts(ledger, [budget]) == after == [(2, 0, 8)]


# --- expiry --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_expire_reclaims_only_dead_reservations(stores: Stores) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit("calls", "day", 10))
    dead = held(await reserve(ledger, [budget], Usage(calls=4), ttl_s=0.2))
    held(await reserve(ledger, [budget], Usage(calls=3)))
    assert dead.expires_at == pytest.approx(time.time() + 0.2, abs=0.1)
    assert await ledger.expire() == 0
    await asyncio.sleep(0.3)
    assert await ledger.expire() == 1
    assert await ledger.expire() == 0
    assert await counts(ledger, [budget]) == [(0, 3, 7)]
    await ledger.settle(dead, Usage(calls=4))  # too late: reclaimed, nothing changes
    assert await counts(ledger, [budget]) == [(0, 3, 7)]


async def test_reserve_reclaims_dead_reservations_first(stores: Stores) -> None:
    ledger = stores.budgets
    budget = scope("a", Limit("tokens_in", "lifetime", 10))
    held(await reserve(ledger, [budget], Usage(tokens_in=10), ttl_s=0.2))
    assert isinstance(await reserve(ledger, [budget], Usage(tokens_in=10)), BudgetRefusal)
    await asyncio.sleep(0.3)
    held(await reserve(ledger, [budget], Usage(tokens_in=10)))
    assert await ledger.expire() == 0
    assert await counts(ledger, [budget]) == [(0, 10, 0)]


# --- the memory ledger's own memory ---------------------------------------------------------------


async def test_the_memory_ledger_keeps_what_is_held_not_what_was_held_lately() -> None:
    ledger = MemoryBudgetLedger()
    budget = scope("a", Limit("calls", "lifetime", 10**9))
    for _ in range(5000):
        reservation = held(await reserve(ledger, [budget], Usage(calls=1)))
        await ledger.settle(reservation, Usage(calls=1))
    still = held(await reserve(ledger, [budget], Usage(calls=1)))
    # 5,001 reservations made within their ttl, one held: the expiry index holds about that one.
    assert len(ledger._expiries) <= 2 * 1 + 1024 + 1
    assert await counts(ledger, [budget]) == [(5000, 1, 10**9 - 5001)]
    await ledger.release(still)
    assert await ledger.expire() == 0  # the index still knows nothing it should not


# --- windows -------------------------------------------------------------------------------------


async def test_windows_roll_over_on_the_clock() -> None:
    now = [calendar.timegm((2027, 1, 31, 23, 59, 30))]
    ledger = MemoryBudgetLedger(clock=lambda: now[0])
    limits = [Limit("calls", window, 1) for window in WINDOWS]
    budget = scope("a", *limits)
    held(await reserve(ledger, [budget], Usage(calls=1)))
    assert isinstance(await reserve(ledger, [budget], Usage(calls=1)), BudgetRefusal)
    now[0] += 45  # 2027-02-01 00:00:15: a new minute, hour, day and month
    starts = [status.window_start for status in await ledger.status([budget])]
    assert starts == [now[0] - 15] * 4 + [0]
    assert await counts(ledger, [budget]) == [(0, 0, 1)] * 4 + [(0, 1, 0)]
    refusal = await reserve(ledger, [budget], Usage(calls=1))
    assert refusal == BudgetRefusal("agent:a", "calls", "lifetime", 1, 0, 1)


async def test_a_reservation_settles_into_the_window_it_was_made_in() -> None:
    now = [calendar.timegm((2027, 3, 1, 10, 0, 50))]
    ledger = MemoryBudgetLedger(clock=lambda: now[0])
    budget = scope("a", Limit("tokens_out", "minute", 100))
    reservation = held(await reserve(ledger, [budget], Usage(tokens_out=100)))
    now[0] += 20
    held(await reserve(ledger, [budget], Usage(tokens_out=100)))  # a fresh minute
    await ledger.settle(reservation, Usage(tokens_out=40))
    assert await counts(ledger, [budget]) == [(0, 100, 0)]


def test_window_start_is_utc_aligned() -> None:
    t = calendar.timegm((2028, 2, 29, 13, 45, 12)) + 0.5
    assert window_start("minute", t) == t - 12.5
    assert window_start("hour", t) == t - 45 * 60 - 12.5
    assert window_start("day", t) == calendar.timegm((2028, 2, 29, 0, 0, 0))
    assert window_start("month", t) == calendar.timegm((2028, 2, 1, 0, 0, 0))
    assert window_start("lifetime", t) == 0


async def test_redis_scripts_compute_the_same_windows(redis_url: str) -> None:
    probe = budget_script("expire").replace(
        "return reclaim(now_ms())",
        "local s, e = window_bounds(ARGV[1], tonumber(ARGV[2])) return {s, e or -1}",
    )
    client = redis.Redis.from_url(redis_url)
    moments = [
        calendar.timegm((y, m, d, 0, 0, 0)) + off
        for y in (1999, 2000, 2024, 2100)
        for m in (1, 2, 3, 12)
        for d in (1, 28)
        for off in (-1, 0, 1, 86399)
    ]
    try:
        for moment in moments:
            for window in WINDOWS:
                start, end = client.eval(probe, 2, "k1", "k2", window, moment)
                assert start == window_start(window, moment), (window, moment)
                assert end == (window_end(window, start) or -1), (window, moment)
    finally:
        client.close()


# --- status, validation --------------------------------------------------------------------------


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_status_reports_every_limit_in_order(stores: Stores) -> None:
    ledger = stores.budgets
    agent = scope("a", Limit("calls", "day", 3), Limit("cost_micro", "month", 900))
    tree = scope("t1", Limit("calls", "lifetime", 2), kind="tree")
    reservation = held(await reserve(ledger, [agent, tree], Usage(calls=1, cost_micro=300)))
    await ledger.settle(reservation, Usage(calls=1, cost_micro=120))
    held(await reserve(ledger, [agent], Usage(calls=1, cost_micro=200)))
    now = time.time()
    assert await ledger.status([agent, tree]) == [
        BudgetStatus("agent:a", "calls", "day", 3, 1, 1, 1, window_start("day", now)),
        BudgetStatus(
            "agent:a", "cost_micro", "month", 900, 120, 200, 580, window_start("month", now)
        ),
        BudgetStatus("tree:t1", "calls", "lifetime", 2, 1, 0, 1, 0),
    ]
    assert await ledger.status([]) == []


@pytest.mark.parametrize(
    ("scopes", "amounts", "ttl_s"),
    [
        ([scope("a", Limit("calls", "day", 1))], Usage(calls=-1), LONG_S),
        ([scope("a", Limit("calls", "day", -1))], Usage(), LONG_S),
        ([scope("a", Limit("calls", "day", 2**53))], Usage(), LONG_S),
        ([scope("a", Limit("calls", "day", 1), Limit("calls", "day", 2))], Usage(), LONG_S),
        ([scope("a"), scope("a")], Usage(), LONG_S),
        ([scope("a")], Usage(), 0),
        ([scope("a")], Usage(), float("inf")),
    ],
)
async def test_unusable_arguments_raise_and_change_nothing(
    stores: Stores, scopes: list[Scope], amounts: Usage, ttl_s: float
) -> None:
    with pytest.raises(ValueError, match=r"ttl_s|limit|scope|calls"):
        await reserve(stores.budgets, scopes, amounts, ttl_s)
    reservation = held(await reserve(stores.budgets, [], Usage()))
    with pytest.raises(ValueError, match="tokens_in"):
        await stores.budgets.settle(reservation, Usage(tokens_in=-5))


# --- rate limiter --------------------------------------------------------------------------------


async def test_rate_limiter_allows_the_burst_then_asks_to_wait(stores: Stores) -> None:
    limiter = stores.rate_limiter
    waits = [await limiter.acquire("agent:a", rate_per_s=5, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.15 < waits[3] <= 0.2
    assert await limiter.acquire("agent:b", rate_per_s=5, burst=3) == 0.0  # keys are separate
    await asyncio.sleep(waits[3] + 0.01)
    assert await limiter.acquire("agent:a", rate_per_s=5, burst=3) == 0.0
    assert await limiter.acquire("agent:a", rate_per_s=5, burst=3) > 0.15


async def test_a_refused_request_takes_nothing(stores: Stores) -> None:
    limiter = stores.rate_limiter
    assert await limiter.acquire("k", rate_per_s=10, burst=1) == 0.0
    first = await limiter.acquire("k", rate_per_s=10, burst=1)
    for _ in range(20):
        assert 0 < await limiter.acquire("k", rate_per_s=10, burst=1) <= first
    await asyncio.sleep(0.11)
    assert await limiter.acquire("k", rate_per_s=10, burst=1) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
async def test_rate_limiter_refuses_unusable_arguments(
    stores: Stores, rate: float, burst: int
) -> None:
    with pytest.raises(ValueError, match=r"rate_per_s|burst"):
        await stores.rate_limiter.acquire("k", rate_per_s=rate, burst=burst)


# --- concurrency ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("clear_of_a_window_boundary")
async def test_concurrent_reserves_admit_exactly_what_fits(stores: Stores) -> None:
    ledger = stores.budgets
    scopes = [
        scope("a", Limit("cost_micro", "day", 37 * 250), Limit("calls", "minute", 1000)),
        scope("t1", Limit("tokens_out", "lifetime", 10**6), kind="tree"),
    ]
    amounts = Usage(calls=1, tokens_out=100, cost_micro=250)
    results = await asyncio.gather(*(reserve(ledger, scopes, amounts) for _ in range(300)))
    reservations = [result for result in results if isinstance(result, Reservation)]
    assert len(reservations) == 37
    assert len({reservation.id for reservation in reservations}) == 37
    assert await counts(ledger, scopes) == [(0, 9250, 0), (0, 37, 963), (0, 3700, 996300)]
    await asyncio.gather(*(ledger.settle(r, amounts) for r in reservations[:20]))
    await asyncio.gather(*(ledger.release(r) for r in reservations * 2))
    assert await counts(ledger, scopes) == [(5000, 0, 4250), (20, 0, 980), (2000, 0, 998000)]


# --- Redis only: key layout, several processes, outage -------------------------------------------


def redis_backend(url: str, prefix: str = "outage") -> StoreBackend:
    return open_backend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))


async def test_redis_budget_keys_share_one_slot(redis_url: str, redis_key_prefix: str) -> None:
    backend = redis_backend(redis_url, redis_key_prefix)
    limits = [Limit("calls", window, 10) for window in WINDOWS]
    scopes = [scope("a{x}", *limits), scope("t}1", *limits, kind="tree")]
    try:
        held(await reserve(backend.stores().budgets, scopes, Usage(calls=1)))
        await backend.stores().rate_limiter.acquire("agent:a", rate_per_s=1, burst=1)
    finally:
        await backend.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{redis_key_prefix}:*")]
        budget_keys = [key for key in keys if key.startswith(f"{redis_key_prefix}:{{budget}}")]
        ttls = {key: client.ttl(key) for key in budget_keys}
    finally:
        client.close()
    assert len(budget_keys) == 2 + 2 * 5  # reservations, their expiries, 2 scopes x 5 windows
    assert len({key_slot(key.encode()) for key in budget_keys}) == 1
    assert len(keys) == len(budget_keys) + 1  # and the rate limiter's key
    # Counters expire after their window (and the grace period); lifetime ones never do.
    for key, ttl in ttls.items():
        if ":w:minute:" in key:
            assert 60 < ttl <= LONG_S + 60
        if ":w:lifetime:" in key or ":rsv" in key:
            assert ttl == -1


_RESERVE_IN_A_PROCESS = """
import asyncio, random, sys
from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.budget_base import Reservation
from broker.stores.factory import open_backend

SCOPES = [Scope("agent", "a", (Limit("cost_micro", "day", 5000),)),
          Scope("tree", "t1", (Limit("calls", "lifetime", 10**6),))]

async def finish(ledger, held):
    if random.random() < 0.5:
        await ledger.settle(held, Usage(calls=1, cost_micro=random.randint(0, 150)))
    else:
        await ledger.release(held)

async def main(url, prefix):
    backend = open_backend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))
    ledger = backend.stores().budgets
    wait = lambda: asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        await backend.ping()
        print("ready", flush=True)
        await wait()
        results = await asyncio.gather(*(
            ledger.reserve(SCOPES, Usage(calls=1, cost_micro=100), ttl_s=600) for _ in range(100)
        ))
        held = [result for result in results if isinstance(result, Reservation)]
        print(len(held), flush=True)
        await wait()
        await asyncio.gather(*(finish(ledger, one) for one in held))
        print("done", flush=True)
    finally:
        await backend.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
SHARED = [
    scope("a", Limit("cost_micro", "day", 5000)),
    scope("t1", Limit("calls", "lifetime", 10**6), kind="tree"),
]


async def shared_status(url: str, prefix: str) -> list[tuple[int, int]]:
    backend = redis_backend(url, prefix)
    try:
        return [(s.used, s.reserved) for s in await backend.stores().budgets.status(SHARED)]
    finally:
        await backend.close()


async def test_processes_sharing_redis_admit_exactly_what_fits(
    redis_url: str, redis_key_prefix: str
) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RESERVE_IN_A_PROCESS,
            redis_url,
            redis_key_prefix,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        async with asyncio.timeout(60):
            assert await everyone(processes, None) == [b"ready"] * 3  # all connected first
            admitted = await everyone(processes, b"go\n")
            assert sum(int(line) for line in admitted) == 50  # 300 asked, 50 x 100 fit
            assert await shared_status(redis_url, redis_key_prefix) == [(0, 5000), (0, 50)]
            assert await everyone(processes, b"finish\n") == [b"done"] * 3
            for process in processes:
                await process.wait()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [process.returncode for process in processes] == [0, 0, 0]
    (spent, reserved), (calls, tree_reserved) = await shared_status(redis_url, redis_key_prefix)
    assert reserved == tree_reserved == 0
    assert 0 <= spent <= 5000
    assert calls <= 50


async def test_unreachable_redis_raises_store_unavailable(unused_tcp_port: int) -> None:
    backend = redis_backend(f"redis://127.0.0.1:{unused_tcp_port}/0")
    stores = backend.stores()
    budget = [scope("a", Limit("calls", "day", 1))]
    reservation = Reservation("r", tuple(budget), Usage(calls=1), time.time())
    operations = [
        stores.budgets.reserve(budget, Usage(calls=1), ttl_s=LONG_S),
        stores.budgets.settle(reservation, Usage(calls=1)),
        stores.budgets.release(reservation),
        stores.budgets.expire(),
        stores.budgets.status(budget),
        stores.rate_limiter.acquire("k", rate_per_s=1, burst=1),
    ]
    try:
        for operation in operations:
            with pytest.raises(StoreUnavailableError) as raised:
                await operation
            assert isinstance(raised.value.__cause__, redis.RedisError)
    finally:
        await backend.close()


# --- budget shards -------------------------------------------------------------------------------


async def test_sharded_budget_keys_live_in_their_scopes_shard(
    redis_url: str, redis_key_prefix: str
) -> None:
    settings = StoreSettings(
        backend="redis", redis_url=redis_url, key_prefix=redis_key_prefix, budget_shards=SHARDS
    )
    backend = open_backend(settings)
    names = ["planner", "researcher", "writer", "critic", "editor"]
    scopes = [scope(name, Limit("calls", "day", 10)) for name in names]
    shards = {budget_shard_of(f"agent:{name}", SHARDS) for name in names}
    assert len(shards) > 1  # the test needs scopes on several shards
    try:
        reservation = held(await reserve(backend.stores().budgets, scopes, Usage(calls=1)))
    finally:
        await backend.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = {key.decode() for key in client.scan_iter(match=f"{redis_key_prefix}:*")}
        records = {
            shard: client.hget(f"{redis_key_prefix}:{{budget:{shard}}}:rsv", reservation.id)
            for shard in range(SHARDS)
        }
    finally:
        client.close()
    day = int(window_start("day", time.time()))
    counters = {
        f"{redis_key_prefix}:{{budget:{budget_shard_of(f'agent:{name}', SHARDS)}}}"
        f":w:day:{day}:agent:{name}"
        for name in names
    }
    assert counters <= keys
    assert not any(key.startswith(f"{redis_key_prefix}:{{budget}}") for key in keys)
    # The reservation's record is on each shard it holds something in, and only there.
    assert {shard for shard, record in records.items() if record} == shards


_RACE_ACROSS_SHARDS = """
import asyncio, sys
from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.budget_base import Reservation
from broker.stores.factory import open_backend

# Two tight limits in two shards: every reserve needs room in both.
SCOPES = [Scope("agent", "a", (Limit("calls", "lifetime", 50),)),
          Scope("tree", "t1", (Limit("calls", "lifetime", 50),))]

async def main(url, prefix, shards):
    settings = StoreSettings(backend="redis", redis_url=url, key_prefix=prefix,
                             budget_shards=int(shards))
    backend = open_backend(settings)
    ledger = backend.stores().budgets
    try:
        await backend.ping()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(*(
            ledger.reserve(SCOPES, Usage(calls=1), ttl_s=600) for _ in range(60)
        ))
        print(sum(isinstance(result, Reservation) for result in results), flush=True)
    finally:
        await backend.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_processes_racing_across_shards_never_overspend(
    redis_url: str, redis_key_prefix: str
) -> None:
    """The weaker half of the sharded guarantee: brokers racing over two shards never take a
    limit past its value, and may admit fewer than fit (each refused by the other's holds)."""
    race = [scope("a", Limit("calls", "lifetime", 50)),
            scope("t1", Limit("calls", "lifetime", 50), kind="tree")]  # fmt: skip
    assert len({budget_shard_of(one.key(), 2) for one in race}) == 2
    argv = [sys.executable, "-c", _RACE_ACROSS_SHARDS, redis_url, redis_key_prefix, "2"]
    pipes = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE}
    processes = [await asyncio.create_subprocess_exec(*argv, **pipes) for _ in range(3)]
    try:
        async with asyncio.timeout(60):
            assert await everyone(processes, None) == [b"ready"] * 3
            admitted = sum(int(line) for line in await everyone(processes, b"go\n"))
            for process in processes:
                await process.wait()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    settings = StoreSettings(
        backend="redis", redis_url=redis_url, key_prefix=redis_key_prefix, budget_shards=2
    )
    backend = open_backend(settings)
    try:
        statuses = await backend.stores().budgets.status(race)
    finally:
        await backend.close()
    # 180 asked, 50 fit: never more, and every admitted call holds in both shards.
    assert 0 < admitted <= 50
    assert [(s.used, s.reserved) for s in statuses] == [(0, admitted)] * 2

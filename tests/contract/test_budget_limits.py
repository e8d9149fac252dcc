"""The live budget limit store, and ConfiguredScopes over it, on every backend (memory, Redis).

A second ``ConfiguredScopes`` over the same store stands for another replica: it sees a change
once its copy is older than ``REFRESH_S`` (an injected clock), the replica that made it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from redis.crc import key_slot

from broker.budgets.model import Limit, Scope
from broker.budgets.scopes import REFRESH_S, ConfiguredScopes
from broker.errors import StoreUnavailableError
from broker.settings import BudgetLimitSettings, BudgetSettings, StoreSettings
from broker.stores.base import StoreBackend, Stores
from broker.stores.budget_limits import BudgetLimitStore, check_override
from broker.stores.factory import open_backend
from broker.stores.redis_budget import budget_base_key

DAY = Limit("calls", "day", 100)
MONTH_COST = Limit("cost_micro", "month", 5_000_000)


@pytest.fixture
def limits(stores: Stores) -> BudgetLimitStore:
    return stores.budget_limits


@pytest.fixture
async def other_replica(
    store_settings: StoreSettings, backend: StoreBackend
) -> AsyncIterator[BudgetLimitStore]:
    """The same store as seen by another broker process (memory: the same process's store)."""
    if store_settings.backend == "memory":
        yield backend.stores().budget_limits
        return
    opened = open_backend(store_settings)
    try:
        yield opened.stores().budget_limits
    finally:
        await opened.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(**agents: tuple[Limit, ...]) -> BudgetSettings:
    def specs(limits: tuple[Limit, ...]) -> tuple[BudgetLimitSettings, ...]:
        return tuple(
            BudgetLimitSettings(metric=x.metric, window=x.window, limit=x.limit) for x in limits
        )

    return BudgetSettings(
        agents={name: specs(x) for name, x in agents.items()},
        teams={"role:user": specs((Limit("calls", "hour", 50),))},
        trees=specs((Limit("calls", "lifetime", 9),)),
        edges={"bob>echo": specs((Limit("calls", "minute", 5),))},
    )


# --- the store ------------------------------------------------------------------------------


async def test_put_all_delete(limits: BudgetLimitStore) -> None:
    assert await limits.all() == {}
    await limits.put("agent:bob", (DAY, MONTH_COST))
    await limits.put("edge:bob>model:gpt", ())
    assert await limits.all() == {"agent:bob": (DAY, MONTH_COST), "edge:bob>model:gpt": ()}
    await limits.put("agent:bob", (MONTH_COST,))  # replaces, not merges
    assert (await limits.all())["agent:bob"] == (MONTH_COST,)
    assert await limits.delete("agent:bob") is True
    assert await limits.delete("agent:bob") is False
    assert list(await limits.all()) == ["edge:bob>model:gpt"]


async def test_every_scope_key_form(limits: BudgetLimitStore) -> None:
    keys = ["agent:*", "agent:bob", "team:role:user", "tree:*", "edge:a>b", "edge:a>model:m"]
    for key in keys:
        await limits.put(key, (DAY,))
    assert list(await limits.all()) == sorted(keys)


async def test_version_changes_with_every_change_only(limits: BudgetLimitStore) -> None:
    start = await limits.version()
    assert await limits.version() == start
    await limits.put("agent:bob", (DAY,))
    after_put = await limits.version()
    assert after_put != start
    await limits.all()
    assert await limits.version() == after_put
    await limits.delete("agent:bob")
    assert await limits.version() not in (start, after_put)


@pytest.mark.parametrize(
    ("scope_key", "bad"),
    [
        ("bob", (DAY,)),
        ("user:bob", (DAY,)),
        ("agent:", (DAY,)),
        ("agent: bob", (DAY,)),
        ("tree:t-123", (DAY,)),
        ("team:*", (DAY,)),
        ("edge:bob", (DAY,)),
        ("edge:>echo", (DAY,)),
        ("agent:bob", (DAY, Limit("calls", "day", 5))),  # the same metric and window twice
        ("agent:bob", (Limit("calls", "day", -1),)),
        ("agent:bob", (Limit("calls", "day", 2**53),)),
        ("agent:bob", (Limit("calls", "week", 1),)),  # type: ignore[arg-type]
    ],
)
async def test_refused_overrides_change_nothing(
    limits: BudgetLimitStore, scope_key: str, bad: tuple[Limit, ...]
) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        check_override(scope_key, bad)
    version = await limits.version()
    with pytest.raises(ValueError, match=r"\S"):
        await limits.put(scope_key, bad)
    assert await limits.all() == {}
    assert await limits.version() == version


async def test_replicas_share_overrides(
    limits: BudgetLimitStore, other_replica: BudgetLimitStore
) -> None:
    await limits.put("agent:bob", (DAY,))
    assert await other_replica.all() == {"agent:bob": (DAY,)}
    assert await other_replica.version() == await limits.version()
    assert await other_replica.delete("agent:bob") is True
    assert await limits.all() == {}


async def test_redis_keys_share_the_budget_hash_tag(redis_url: str, redis_key_prefix: str) -> None:
    settings = StoreSettings(backend="redis", redis_url=redis_url, key_prefix=redis_key_prefix)
    backend = open_backend(settings)
    try:
        await backend.stores().budget_limits.put("agent:bob", (DAY,))
    finally:
        await backend.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{redis_key_prefix}:*"))
    finally:
        client.close()
    assert len(keys) == 2
    ledger_slot = key_slot(f"{budget_base_key(redis_key_prefix)}:rsv".encode())
    assert {key_slot(k) for k in keys} == {ledger_slot}


async def test_redis_down_is_store_unavailable() -> None:
    settings = StoreSettings(backend="redis", redis_url="redis://127.0.0.1:1/0")
    backend = open_backend(settings)
    store = backend.stores().budget_limits
    try:
        for call in (
            store.all(),
            store.version(),
            store.delete("agent:x"),
            store.put("agent:x", ()),
        ):
            with pytest.raises(StoreUnavailableError):
                await call
    finally:
        await backend.close()


# --- ConfiguredScopes over the store --------------------------------------------------------


def _keys_and_limits(scopes: tuple[Scope, ...]) -> dict[str, tuple[Limit, ...]]:
    return {s.key(): s.limits for s in scopes}


async def test_override_replaces_config_and_unset_restores_it(limits: BudgetLimitStore) -> None:
    own = (Limit("calls", "day", 2),)
    scopes = ConfiguredScopes(_config(bob=own), limits)
    before = await scopes.for_llm_call("bob", ("role:user",), "t1", "echo")
    assert _keys_and_limits(before)["agent:bob"] == own
    await scopes.set_live("agent:bob", (MONTH_COST,))
    await scopes.set_live("tree:*", ())  # unmetered while it stands
    after = _keys_and_limits(await scopes.for_llm_call("bob", ("role:user",), "t1", "echo"))
    assert after["agent:bob"] == (MONTH_COST,)
    assert "tree:t1" not in after
    assert after["team:role:user"] == (Limit("calls", "hour", 50),)  # untouched: config
    assert await scopes.unset_live("agent:bob") is True
    assert await scopes.unset_live("agent:bob") is False
    restored = _keys_and_limits(scopes.for_call("bob", ("role:user",), "t1", "echo"))
    assert restored["agent:bob"] == own


async def test_agent_precedence(limits: BudgetLimitStore) -> None:
    """Own override, own config, the agent:* override, the "*" config default."""
    default, own = (Limit("calls", "day", 7),), (Limit("calls", "day", 2),)
    scopes = ConfiguredScopes(_config(**{"*": default, "bob": own}), limits)
    await scopes.set_live("agent:*", (DAY,))
    assert scopes.for_call("bob", (), None, "x")[0].limits == own
    assert scopes.for_call("carol", (), None, "x")[0].limits == (DAY,)
    await scopes.unset_live("agent:*")
    assert scopes.for_call("carol", (), None, "x")[0].limits == default


async def test_other_replica_sees_a_change_within_refresh_time(
    limits: BudgetLimitStore, other_replica: BudgetLimitStore
) -> None:
    clock = Clock()
    here = ConfiguredScopes(_config(), limits, clock=clock)
    there = ConfiguredScopes(_config(), other_replica, clock=clock)
    assert await there.for_llm_call("bob", (), None, "x") == ()
    await here.set_live("agent:bob", (DAY,))
    assert (await here.for_llm_call("bob", (), None, "x"))[0].limits == (DAY,)  # at once here
    clock.now += REFRESH_S / 2
    assert await there.for_llm_call("bob", (), None, "x") == ()  # its copy is still fresh
    clock.now += REFRESH_S
    assert (await there.for_llm_call("bob", (), None, "x"))[0].limits == (DAY,)


async def test_status_reports_the_source(limits: BudgetLimitStore) -> None:
    scopes = ConfiguredScopes(_config(bob=(Limit("calls", "day", 2),)), limits)
    await scopes.set_live("edge:bob>model:m", (DAY,))
    await scopes.set_live("team:ops", (DAY,))
    described = {s.scope.key(): s.source for s in scopes.described("", (), "")}
    assert described == {
        "agent:bob": "config",
        "team:role:user": "config",
        "team:ops": "live",
        "edge:bob>echo": "config",
        "edge:bob>model:m": "live",
    }
    for_bob = {s.scope.key(): s.source for s in scopes.described("bob", ("ops",), "")}
    assert for_bob == {
        "agent:bob": "config",
        "team:ops": "live",
        "edge:bob>echo": "config",
        "edge:bob>model:m": "live",
    }


async def test_without_a_store_only_the_config_counts() -> None:
    scopes = ConfiguredScopes(_config(bob=(DAY,)))
    await scopes.refresh()
    assert _keys_and_limits(scopes.for_call("bob", (), None, "echo")) == {
        "agent:bob": (DAY,),
        "edge:bob>echo": (Limit("calls", "minute", 5),),
    }
    with pytest.raises(RuntimeError):
        await scopes.set_live("agent:bob", ())


class CountingStore(BudgetLimitStore):
    """Counts the reads a ConfiguredScopes makes of ``inner``."""

    def __init__(self, inner: BudgetLimitStore) -> None:
        self.inner = inner
        self.reads = 0

    async def put(self, scope_key: str, limits: tuple[Limit, ...]) -> None:
        await self.inner.put(scope_key, limits)

    async def delete(self, scope_key: str) -> bool:
        return await self.inner.delete(scope_key)

    async def all(self) -> dict[str, tuple[Limit, ...]]:
        self.reads += 1
        return await self.inner.all()

    async def version(self) -> int:
        self.reads += 1
        return await self.inner.version()


async def test_concurrent_calls_share_one_refresh(limits: BudgetLimitStore) -> None:
    clock, counting = Clock(), CountingStore(limits)
    scopes = ConfiguredScopes(_config(), counting, clock=clock)
    await limits.put("agent:bob", (DAY,))
    found = await asyncio.gather(*(scopes.for_llm_call("bob", (), None, "x") for _ in range(50)))
    assert all(f[0].limits == (DAY,) for f in found)
    assert counting.reads == 2  # the version, then every override once
    await asyncio.gather(*(scopes.for_llm_call("bob", (), None, "x") for _ in range(50)))
    assert counting.reads == 2  # fresh: no read at all
    clock.now += REFRESH_S
    await asyncio.gather(*(scopes.for_llm_call("bob", (), None, "x") for _ in range(50)))
    assert counting.reads == 3  # stale but unchanged: the version only

"""The alert state contract, against memory and every Redis topology (one suite)."""

from __future__ import annotations

import asyncio
import uuid

from broker.stores.alert_base import Alert, AlertState, EdgeRules
from broker.stores.base import StoreBackend

RULES = EdgeRules(
    bucket_s=3600,
    smoothing=0.5,
    rate_factor=3.0,
    rate_min_calls=5,
    rate_warmup_buckets=0,
    depth_warmup_calls=3,
    ttl_s=600,
)


def _edge() -> str:
    return f"caller-{uuid.uuid4().hex[:6]}>target"


async def test_the_first_call_on_an_edge_is_found_once(backend: StoreBackend) -> None:
    state = backend.alert_state()
    edge = _edge()
    found = await asyncio.gather(*(state.observe_edge(edge, 1, 1, RULES) for _ in range(8)))
    assert sum(f.first for f in found) == 1  # concurrent replicas agree


async def test_a_rate_far_above_a_zero_baseline_fires_once_per_bucket(
    backend: StoreBackend,
) -> None:
    state = backend.alert_state()
    edge = _edge()
    found = [await state.observe_edge(edge, 1, 1, RULES) for _ in range(10)]
    rates = [f.rate for f in found if f.rate]
    assert rates == [5]  # reached rate_min_calls; not again in this bucket
    assert found[0].baseline == 0.0


async def test_a_deeper_chain_than_usual_is_found_after_the_warm_up(
    backend: StoreBackend,
) -> None:
    state = backend.alert_state()
    edge = _edge()
    for depth in (2, 1, 2):  # the warm-up: usual is 2
        assert (await state.observe_edge(edge, 1, depth, RULES)).deeper == 0
    assert (await state.observe_edge(edge, 1, 2, RULES)).deeper == 0
    found = await state.observe_edge(edge, 1, 4, RULES)
    assert (found.deeper, found.usual) == (4, 2)
    assert (await state.observe_edge(edge, 1, 4, RULES)).deeper == 0  # now usual


async def test_a_burst_is_reported_once_when_it_reaches_the_threshold(
    backend: StoreBackend,
) -> None:
    state = backend.alert_state()
    caller = f"denied-{uuid.uuid4().hex[:6]}"
    counts = [await state.count_burst(caller, 2, 60, 5) for _ in range(5)]
    assert counts == [0, 0, 6, 0, 0]


async def test_once_is_true_once(backend: StoreBackend) -> None:
    state = backend.alert_state()
    subject = f"budget-{uuid.uuid4().hex[:6]}"
    answers = await asyncio.gather(*(state.once(subject, 60) for _ in range(4)))
    assert answers.count(True) == 1


async def test_only_keys_an_agents_earlier_cards_lacked_are_new(backend: StoreBackend) -> None:
    state = backend.alert_state()
    agent = f"agent-{uuid.uuid4().hex[:6]}"
    assert await state.new_card_keys(agent, [], 60) == []  # first card, unsigned
    assert await state.new_card_keys(agent, ["k1"], 60) == ["k1"]
    assert await state.new_card_keys(agent, ["k1"], 60) == []
    assert await state.new_card_keys(agent, ["k1", "k2"], 60) == ["k2"]
    other = f"agent-{uuid.uuid4().hex[:6]}"
    assert await state.new_card_keys(other, ["k9"], 60) == []  # its first card sets the usual


async def test_kept_alerts_are_bounded_listed_newest_first_and_acknowledged_once(
    backend: StoreBackend,
) -> None:
    state: AlertState = backend.alert_state()
    base = 1_000_000.0 + uuid.uuid4().int % 1000
    for i in range(12):
        alert = Alert(id=f"a{i}", rule="new_edge", subject="x>y", at=base + i, summary="s",
                      detail={"calls": i})  # fmt: skip
        await state.add(alert, keep=10, ttl_s=600)
    listed = await state.recent(50)
    assert [a.id for a in listed][:3] == ["a11", "a10", "a9"]
    assert "a0" not in {a.id for a in listed} and "a1" not in {a.id for a in listed}
    assert listed[0].detail == {"calls": 11}
    assert await state.acknowledge("a11", "admin", base + 100)
    assert not await state.acknowledge("a11", "admin", base + 101)
    assert not await state.acknowledge("a0", "admin", base + 101)  # dropped
    acked = (await state.recent(1))[0]
    assert (acked.acked_at, acked.acked_by) == (base + 100, "admin")

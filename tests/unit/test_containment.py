"""Circuit breakers and bulkheads: when they open, refuse, probe and close again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.containment.breaker import CircuitBreaker, CircuitOpenError, State
from broker.containment.bulkhead import AtCapacityError, Bulkhead
from broker.containment.stages import AgentContainment
from broker.errors import (
    BudgetExhaustedError,
    UpstreamBulkheadFullError,
    UpstreamCircuitOpenError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from broker.settings import load_settings
from broker.settings_containment import BreakerSettings, ContainmentSettings
from broker.stores.base import AgentRecord
from broker.types import MediationContext, Outcome, Reply, StreamReply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    defaults: dict[str, float] = {"failures": 3, "window_s": 10.0, "open_s": 5.0}
    return CircuitBreaker("c", BreakerSettings(**{**defaults, **settings}), clock)  # type: ignore[arg-type]


def call(b: CircuitBreaker, success: bool | None) -> None:
    b.record(success, ticket=b.admit())


def test_it_opens_after_n_failures_in_the_window_and_refuses_with_the_time_left() -> None:
    clock = Clock()
    b = breaker(clock)
    call(b, False)
    call(b, False)
    assert b.state is State.CLOSED
    call(b, False)
    assert b.state is State.OPEN
    clock.now += 2
    with pytest.raises(CircuitOpenError) as refused:
        b.admit()
    assert refused.value.retry_after_s == pytest.approx(3.0)


def test_failures_spread_wider_than_the_window_do_not_open_it() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(10):
        call(b, False)
        call(b, False)
        clock.now += 11  # the window forgets them
        assert b.state is State.CLOSED


def test_a_busy_upstream_failing_a_small_share_of_its_calls_stays_closed() -> None:
    clock = Clock()
    b = breaker(clock, failure_ratio=0.5)
    for _ in range(10):
        for _ in range(9):
            call(b, True)
        call(b, False)  # 10 failures in 100 calls within the window
    assert b.state is State.CLOSED


def test_half_open_lets_one_probe_through_and_a_success_closes_it() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        call(b, False)
    clock.now += 5
    assert b.admit() > 0  # the probe
    assert b.state is State.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.admit()  # while the probe is out, everyone else is refused
    b.record(True, ticket=1)
    assert b.state is State.CLOSED
    call(b, False)
    call(b, False)
    assert b.state is State.CLOSED  # the window started afresh


def test_a_failed_probe_opens_it_again_for_open_s() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        call(b, False)
    clock.now += 5
    b.record(False, ticket=b.admit())
    assert b.state is State.OPEN
    clock.now += 4.9
    with pytest.raises(CircuitOpenError):
        b.admit()
    clock.now += 0.1
    assert b.admit() > 0


def test_a_neutral_probe_frees_its_place_without_deciding_anything() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        call(b, False)
    clock.now += 5
    b.record(None, ticket=b.admit())  # e.g. refused by the budget stage
    assert b.state is State.HALF_OPEN
    assert b.admit() > 0


def test_calls_admitted_before_it_opened_do_not_count_when_they_end() -> None:
    clock = Clock()
    b = breaker(clock)
    late = [b.admit() for _ in range(5)]
    for _ in range(3):
        call(b, False)
    for ticket in late:
        b.record(True, ticket=ticket)  # successes from before: they do not close it
    assert b.state is State.OPEN


def test_a_probe_of_an_earlier_round_decides_nothing() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        call(b, False)
    clock.now += 5
    stale = b.admit()
    b.record(None, ticket=stale)  # round 1 probe gave no verdict ...
    b.record(False, ticket=b.admit())  # ... round 1 failed again: open
    clock.now += 5
    current = b.admit()  # round 2
    b.record(True, ticket=stale)  # a stale ticket closes nothing
    assert b.state is State.HALF_OPEN
    b.record(True, ticket=current)
    assert b.state is State.CLOSED


def test_the_bulkhead_refuses_the_call_past_its_cap_and_forgets_idle_agents() -> None:
    bulkhead = Bulkhead(
        ContainmentSettings(max_concurrent_per_agent=2, agent_max_concurrent={"big": 3, "free": 0})
    )
    assert bulkhead.enter("a") and bulkhead.enter("a")
    with pytest.raises(AtCapacityError) as full:
        bulkhead.enter("a")
    assert full.value.limit == 2
    assert [bulkhead.enter("big") for _ in range(3)] == [True] * 3
    assert not any(bulkhead.enter("free") for _ in range(500))  # 0: no cap, nothing counted
    bulkhead.leave("a")
    assert bulkhead.enter("a")
    for _ in range(2):
        bulkhead.leave("a")
    assert bulkhead.in_flight("a") == 0 and "a" not in bulkhead._in_flight


def test_containment_settings_have_documented_defaults_and_load_from_toml(tmp_path: Path) -> None:
    defaults = load_settings(environ={}).containment
    assert defaults.breaker == BreakerSettings()
    assert (defaults.breaker.failures, defaults.breaker.window_s) == (5, 10.0)
    assert (defaults.breaker.open_s, defaults.max_concurrent_per_agent) == (5.0, 128)
    config = tmp_path / "broker.toml"
    config.write_text(
        "[containment]\nmax_concurrent_per_agent = 8\n"
        "[containment.breaker]\nfailures = 2\nopen_s = 1.5\n"
        "[containment.agent_max_concurrent]\nslow = 1\n"
    )
    loaded = load_settings(str(config), environ={}).containment
    assert loaded.max_concurrent("slow") == 1 and loaded.max_concurrent("other") == 8
    assert (loaded.breaker.failures, loaded.breaker.open_s) == (2, 1.5)


# --- the A2A stage --------------------------------------------------------------------------


async def _body() -> bytes:
    return b"{}"


def _ctx(agent: str = "c") -> MediationContext:
    ctx = MediationContext("jsonrpc", agent, "POST", headers={}, read_body=_body, caller="a")
    ctx.target = AgentRecord(name=agent, card_json="{}")
    return ctx


async def _events() -> AsyncIterator[bytes]:
    yield b"data: {}\r\n\r\n"


async def test_a_stream_holds_its_place_until_it_ends_or_is_dropped_unstarted() -> None:
    stage = AgentContainment(ContainmentSettings(agent_max_concurrent={"c": 1}))

    async def stream(ctx: MediationContext) -> Outcome:
        ctx.upstream_status = 200
        return StreamReply(_events())

    outcome = await stage(_ctx(), stream)
    assert stage.bulkhead.in_flight("c") == 1
    with pytest.raises(UpstreamBulkheadFullError):
        await stage(_ctx(), stream)
    assert isinstance(outcome, StreamReply)
    assert [e async for e in outcome.events] == [b"data: {}\r\n\r\n"]
    assert stage.bulkhead.in_flight("c") == 0  # ended: left

    never_started = await stage(_ctx(), stream)
    assert stage.bulkhead.in_flight("c") == 1
    del never_started  # the response never started: dropped, it leaves all the same
    assert stage.bulkhead.in_flight("c") == 0


async def test_the_stage_counts_upstream_failures_only() -> None:
    stage = AgentContainment(ContainmentSettings(breaker=BreakerSettings(failures=3)))

    async def unreachable(_: MediationContext) -> Outcome:
        raise UpstreamUnreachableError

    async def too_slow(_: MediationContext) -> Outcome:
        raise UpstreamTimeoutError

    async def over_budget(_: MediationContext) -> Outcome:
        raise BudgetExhaustedError

    async def server_error(ctx: MediationContext) -> Outcome:
        ctx.upstream_status = 503
        return Reply(503, b"{}")

    for _ in range(5):  # the broker's own refusals say nothing about the agent
        with pytest.raises(BudgetExhaustedError):
            await stage(_ctx(), over_budget)
    with pytest.raises(UpstreamUnreachableError):
        await stage(_ctx(), unreachable)
    with pytest.raises(UpstreamTimeoutError):
        await stage(_ctx(), too_slow)
    await stage(_ctx(), server_error)
    with pytest.raises(UpstreamCircuitOpenError) as refused:
        await stage(_ctx(), server_error)
    assert refused.value.metadata == {"agent": "c"} and refused.value.retry_after
    assert stage.bulkhead.in_flight("c") == 0
    await stage(_ctx("d"), server_error)  # another agent's circuit is its own

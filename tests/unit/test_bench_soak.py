"""The soak scenario's pure parts: how long it runs, what it reads from the environment, and the
growth per 100,000 requests it reports."""

from __future__ import annotations

import pytest

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.scenario_soak import Plan, _per_100k


def test_a_plan_runs_to_its_request_count_or_for_its_duration() -> None:
    by_count = Plan(requests=1000)
    assert by_count.more(999, 10_000.0) and not by_count.more(1000, 0.0)
    by_time = Plan(requests=1000, duration_s=60.0)
    assert by_time.more(10**9, 59.9) and not by_time.more(0, 60.0)


def test_the_environment_sets_duration_rate_retention_and_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("A2A_BENCH_SOAK_DURATION_S", "1800")
    monkeypatch.setenv("A2A_BENCH_SOAK_RATE", "300")
    monkeypatch.setenv("A2A_BENCH_SOAK_FINISHED_TTL_S", "300")
    monkeypatch.setenv("A2A_BENCH_SOAK_CONCURRENCY", "4")
    plan = Plan.from_environment()
    assert (plan.duration_s, plan.rate, plan.finished_ttl_s, plan.concurrency) == (
        1800.0, 300.0, 300, 4,
    )  # fmt: skip
    monkeypatch.delenv("A2A_BENCH_SOAK_DURATION_S")
    monkeypatch.delenv("A2A_BENCH_SOAK_RATE")
    assert (Plan.from_environment().duration_s, Plan.from_environment().rate) == (None, None)


def test_growth_is_read_over_the_second_half() -> None:
    readings = [
        {"requests": 0, "broker_rss": 100},
        {"requests": 100_000, "broker_rss": 500},  # the first half: warming up, not counted
        {"requests": 200_000, "broker_rss": 600},
        {"requests": 300_000, "broker_rss": 650},
    ]
    assert _per_100k(readings, "broker_rss") == 50.0  # (650 - 600) over the last 100k
    assert _per_100k(readings, "redis_used_memory") is None
    assert _per_100k(readings[:1], "broker_rss") is None

"""The report's reading of the broker rows: what it says the c=1 p50 is made of."""

from __future__ import annotations

from typing import Any

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.idle import HALT_NOTE
from benchmarks.verdict import _broker_cost


def _point(scenario: str, c: int, p50_ms: float, **kw: Any) -> dict[str, Any]:
    return {"scenario": scenario, "concurrency": c, "rps": 1_000.0, "p50_ms": p50_ms,
            "cpu_us_per_req": 300.0, **kw}  # fmt: skip


def _results(*extra: dict[str, Any]) -> dict[str, Any]:
    points = [
        _point(scenario, c, p50)
        for scenario, p50 in (("a", 0.03), ("b1", 0.5), ("c", 1.1), ("e", 1.5))
        for c in (1, 16)
    ]
    return {"points": [*points, *extra]}


_STAGES = (_point("d-off", 1, 0.6), _point("d-audit", 1, 1.0))
_METERING = (_point("r-none", 1, 1.2), _point("r-budget", 1, 1.65))


def test_the_c1_p50_is_split_into_the_audit_and_the_budget_each_store_has() -> None:
    memory, redis = _broker_cost(_results(*_STAGES, *_METERING))
    audit = (
        "the audit file (its records, and their fsync, waited on before forwarding) +0.40 ms "
        "((d-audit) over (d-off))"
    )
    assert audit in memory
    assert "a calls budget" not in memory  # the memory store's row makes no Redis round trip
    budget = (
        "a calls budget (reserved ahead, decision 0109: its script rides in the claim's round "
        "trip, decision 0110) +0.45 ms ((r-budget) over"
    )
    assert f"{audit}; {budget} (r-none))." in redis


def test_no_split_from_configurations_this_run_did_not_measure() -> None:
    for row in _broker_cost(_results()):
        assert "At c=1, steps" not in row
    kept = [{**p, "origin": "an earlier run"} for p in (*_STAGES, *_METERING)]
    for row in _broker_cost(_results(*kept)):
        assert "At c=1, steps" not in row  # another run's pair is not this run's split


def test_the_c1_rows_name_the_halting_only_on_a_machine_that_halts_at_once() -> None:
    halting = {**_results(), "machine": {"idle": {"driver": "haltpoll", "halt_poll_ns": 0}}}
    assert all(row.endswith(HALT_NOTE) for row in _broker_cost(halting))
    polling = {**_results(), "machine": {"idle": {"driver": "haltpoll", "halt_poll_ns": 10}}}
    assert not any(HALT_NOTE in row for row in _broker_cost(polling))


def test_a_budgeted_hop_is_held_to_one_round_trip_at_c1() -> None:
    from benchmarks.verdict import _round_trip_rows

    one = _point("r-budget", 1, 1.0, redis_reads_per_req=1.03)
    [row] = _round_trip_rows(_results(one))
    assert row.startswith("| Redis round trips per request, calls budget (r-budget), c=1 |")
    assert "| 1.03 | met |" in row
    two = _point("r-budget", 1, 1.0, redis_reads_per_req=2.02)
    [row] = _round_trip_rows(_results(two))
    assert "| 2.02 | **not met** | +1.02 round trips |" in row

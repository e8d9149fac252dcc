"""Gauges of shared state that a part registers are served on /metrics at scrape time."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, generate_latest

from broker.errors import StoreUnavailableError
from broker.observability import metrics
from broker.observability.scrape import Snapshot, _registered_gauges


async def _pending() -> Sequence[tuple[tuple[str, ...], float]]:
    return [((), 3.0)]


async def _broken() -> Sequence[tuple[tuple[str, ...], float]]:
    raise StoreUnavailableError(detail="down")


async def test_a_registered_gauge_is_read_at_each_scrape_and_a_failing_one_left_out() -> None:
    metrics.register_scrape_gauge("approvals_pending", "Approvals waiting.", (), _pending)
    metrics.register_scrape_gauge("broken_gauge", "Never read.", (), _broken)
    try:
        registry = CollectorRegistry()
        registry.register(Snapshot([], False, (), await _registered_gauges()))
        text = generate_latest(registry).decode()
    finally:
        metrics.scrape_gauges.pop("approvals_pending")
        metrics.scrape_gauges.pop("broken_gauge")
    assert "a2a_broker_approvals_pending 3.0" in text
    assert "broken_gauge" not in text

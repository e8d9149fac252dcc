"""The tracing cost benchmark runs and reports every case (its figures are for docs/)."""

from __future__ import annotations

from benchmarks.tracing_costs import measure
from broker.observability import tracing


def test_every_case_is_timed_and_tracing_is_left_off() -> None:
    found = measure(number=20)
    assert set(found) == {
        "baseline (context only)",
        "off, caller sent traceparent",
        "off, new trace",
        "on, no exporter",
        "on, batch exporter",
        "on, in-memory exporter",
    }
    assert all(micros > 0 for micros in found.values())
    assert not tracing.recording()

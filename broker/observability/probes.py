"""Hooks for the broker's lower layers (stores, audit, circuit breakers): they import nothing
of the broker, so any module can call them without an import cycle."""

from __future__ import annotations

from collections.abc import Callable

from broker.observability import metrics, tally


def store_call(call: str) -> tuple[Callable[[float], None], Callable[[], None]]:
    """For one store call (``RedisRegistry.get``...): record its round trip time, and count its
    failure. Resolved once, where the call is defined."""
    timer = metrics.store_round_trips.labels(call)
    errors = metrics.store_errors.labels(call)

    def took(seconds: float) -> None:
        if metrics.recording:
            tally.observe(timer, seconds)

    def failed() -> None:
        if metrics.recording:
            errors.inc()

    return took, failed


_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def breaker_changed(upstream: str, state: str) -> None:
    """A circuit breaker entered ``state`` (closed, half_open, open)."""
    if not metrics.recording:
        return
    metrics.breaker_state.labels(upstream).set(_BREAKER_STATES[state])
    metrics.breaker_transitions.labels(upstream, state).inc()


def alert_raised(rule: str) -> None:
    if metrics.recording:
        metrics.alerts.labels(rule).inc()


def alert_webhook_failed() -> None:
    if metrics.recording:
        metrics.alert_webhook_failures.inc()


def audit_synced() -> None:
    """One fsync of the audit file returned (however many records it made durable)."""
    if metrics.recording:
        tally.add(metrics.audit_fsyncs)


def audit_written(seconds: float, *, failed: bool = False) -> None:
    if not metrics.recording:
        return
    if failed:
        metrics.audit_write_errors.inc()
    else:
        tally.observe(metrics.audit_writes, seconds)

"""``GET /metrics``: the recorded families of every worker, plus gauges read at scrape time
from what the broker already holds (budgets from the store, the global kill switch)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.audit.export.errors import PositionStoreError
from broker.audit.log import AuditLogError
from broker.errors import BrokerError, MetricsUnauthenticatedError
from broker.http.admin import admin_token_digest, token_matches
from broker.http.state import AnyRequest, runtime_of
from broker.observability import metrics, tally
from broker.observability.metrics import NAMESPACE, scrape_registry
from broker.stages.authenticate import bearer_token
from broker.stores.budget_base import BudgetStatus

log = logging.getLogger("a2a_broker.metrics")
NOT_CONFIGURED = "No metrics token and no admin token are configured: /metrics is closed."


def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The metrics token or the admin token (only their SHA-256 digests are held)."""
    settings = connection.app.state.runtime.settings
    digests = (settings.metrics.token_sha256.lower(), admin_token_digest(settings))
    accepted = [digest for digest in digests if digest]
    if not accepted:
        raise MetricsUnauthenticatedError(NOT_CONFIGURED)
    token = bearer_token(connection.headers.get("authorization"))
    if token is None or not any(token_matches(token, digest) for digest in accepted):
        raise MetricsUnauthenticatedError


class Snapshot(Collector):
    """Gauges read once per scrape by the handler (the store is async; collectors are not)."""

    def __init__(
        self,
        budgets: Sequence[BudgetStatus],
        kill_engaged: bool,
        export_lag: Sequence[tuple[str, str, int]] = (),
        registered: Sequence[GaugeMetricFamily] = (),
    ) -> None:
        self._budgets = budgets
        self._kill_engaged = kill_engaged
        self._export_lag = export_lag
        self._registered = registered

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ("scope", "metric", "window")
        families = {
            part: GaugeMetricFamily(
                f"{NAMESPACE}_budget_{part}",
                f"Budget {part}, per scope, metric and window.",
                labels=labels,
            )
            for part in ("limit", "used", "reserved", "remaining")
        }
        for status in self._budgets:
            key = (status.scope, status.metric, status.window)
            for part, family in families.items():
                family.add_metric(key, getattr(status, part))
        yield from families.values()
        kill = GaugeMetricFamily(
            f"{NAMESPACE}_kill_switch_engaged", "1 while the global kill switch is engaged."
        )
        kill.add_metric((), 1 if self._kill_engaged else 0)
        yield kill
        if self._export_lag:
            lag = GaugeMetricFamily(
                f"{NAMESPACE}_audit_export_lag_records",
                "Audit records written but not yet acknowledged by a SIEM sink, per chain.",
                labels=("sink", "replica"),
            )
            for sink, replica, records in self._export_lag:
                lag.add_metric((sink, replica), records)
            yield lag
        yield from self._registered


async def _registered_gauges() -> list[GaugeMetricFamily]:
    """The gauges other parts registered (``metrics.register_scrape_gauge``), read now."""
    found = []
    for name, (help_text, labels, read) in metrics.scrape_gauges.items():
        try:
            values = await read()
        except BrokerError as err:  # left out, never a failed scrape
            log.warning("%s left out of this scrape: %s", name, err.reason)
            continue
        family = GaugeMetricFamily(f"{NAMESPACE}_{name}", help_text, labels=labels)
        for label_values, value in values:
            family.add_metric(label_values, value)
        found.append(family)
    return found


async def _budgets(request: AnyRequest) -> list[BudgetStatus]:
    """Every scope with limits (configured or live), as the admin API's /budgets shows them."""
    runtime = runtime_of(request)
    scopes = runtime.budget_scopes
    try:
        await scopes.refresh()
        found = scopes.described("", (), "")
        return await runtime.stores.budgets.status([f.scope for f in found]) if found else []
    except BrokerError as err:  # the store error is counted; the other families still go out
        log.warning("budget gauges left out of this scrape: %s", err.reason)
        return []


async def _export_lag(request: AnyRequest) -> list[tuple[str, str, int]]:
    """Per sink and chain: records behind the chain's head (only where exporters run)."""
    found = []
    for exporter in runtime_of(request).exporters:
        sink = exporter.sink.name
        try:
            for replica in await exporter.log.replicas():
                head = await exporter.log.head(replica)
                done = await exporter.positions.load(sink, replica)
                found.append((sink, replica, max(0, (head.seq if head else 0) - done)))
        except (AuditLogError, PositionStoreError) as exc:  # left out, never a failed scrape
            log.warning("audit export lag of %s left out of this scrape: %s", sink, exc)
    return found


@get("/metrics", guards=[metrics_guard], include_in_schema=False)
async def metrics_endpoint(request: AnyRequest) -> Response[bytes]:
    runtime = runtime_of(request)
    tally.flush()  # this process's latest requests, not yet batched into the shared values
    snapshot = CollectorRegistry()
    killed = runtime.controls.kill.state is not None
    lag, registered = await _export_lag(request), await _registered_gauges()
    snapshot.register(Snapshot(await _budgets(request), killed, lag, registered))
    body = generate_latest(scrape_registry()) + generate_latest(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def metrics_routes(enabled: bool) -> list[Any]:
    """``/metrics`` when metrics are enabled; otherwise nothing, and nothing is recorded."""
    metrics.recording = enabled
    return [metrics_endpoint] if enabled else []

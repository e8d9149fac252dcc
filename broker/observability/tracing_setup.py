"""Turning spans on at start-up, as ``[tracing]`` says (``broker.observability.tracing``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.observability import tracing
from broker.settings import SettingsError
from broker.settings_observability import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("a2a_broker.tracing")
SCOPE = "a2a_broker"


def start_tracing(settings: TracingSettings) -> Callable[[], None]:
    """Record spans if ``settings.enabled``; returns what flushes and stops them at shutdown.

    Raises ``SettingsError`` if OTLP export is asked for without the exporter installed."""
    if not settings.enabled:
        tracing.disable()
        return tracing.disable
    from opentelemetry import trace  # noqa: PLC0415 - only when spans are on

    if settings.exporter == "none":
        tracing.enable(trace.get_tracer(SCOPE))
        log.info("tracing: spans go to the process's tracer provider")
        return tracing.disable
    provider = _otlp_provider(settings)
    tracing.enable(provider.get_tracer(SCOPE))
    log.info("tracing: spans exported with OTLP to %s", settings.otlp_endpoint)

    def stop() -> None:
        tracing.disable()
        provider.shutdown()  # flushes what is still batched

    return stop


def _otlp_provider(settings: TracingSettings) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ImportError:
        raise SettingsError(
            "[tracing] exporter = \"otlp\" needs the OTLP exporter: "
            "pip install 'a2a-broker[otlp]' (or exporter = \"none\")"
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    return provider

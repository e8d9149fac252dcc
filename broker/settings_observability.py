"""The ``[metrics]``, ``[tracing]``, ``[alerts]`` and ``[console]`` sections (broker/observability,
broker/alerts, broker/console)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Prometheus metrics at ``GET /metrics`` (docs/observability.md)."""

    # False: nothing is recorded and there is no /metrics route.
    enabled: bool = True
    # SHA-256 hex of a token that may read /metrics and nothing else (a scraper should not hold
    # the admin token). The admin token reads /metrics too. Neither set: /metrics is refused.
    token_sha256: str = ""
    # Above 0: `a2a-broker serve` also serves the metrics recorded by its workers, without a
    # token, on this port of `host` (for a scraper on a private network). The budget gauges,
    # read from the store at scrape time, are only on /metrics of the broker's own port.
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    host: str = "127.0.0.1"


class ConsoleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The operator console at ``/console`` (docs/console.md); login with the admin token."""

    enabled: bool = True
    # A session ends this long after login, and after this long without a request.
    session_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 8 * 3600.0
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    # Send the session cookie only over HTTPS (set it when the broker sits behind TLS).
    secure_cookie: bool = False
    # How often the live traffic page asks for new requests.
    poll_interval_s: Annotated[float, msgspec.Meta(ge=0.5)] = 2.0
    # Requests the console remembers per broker process for the live traffic page.
    recent_requests: Annotated[int, msgspec.Meta(ge=10, le=10_000)] = 200


class TracingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """OpenTelemetry traces (docs/observability.md). Whatever these say, every call carries a
    W3C trace context to its agent or provider and its trace id is in its audit records and
    log line; these settings decide whether the broker also records spans."""

    # True: a span per mediated call, with an event per pipeline stage, exported as below.
    enabled: bool = False
    # "otlp": to an OpenTelemetry collector over OTLP/HTTP (needs the package's `otlp` extra);
    # "none": to whatever tracer provider the process already has (when the broker is embedded).
    exporter: Literal["otlp", "none"] = "otlp"
    # The collector's traces endpoint (OTLP/HTTP with protobuf).
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    # `service.name` of the broker's spans.
    service_name: str = "a2a-broker"
    # Share of new traces recorded (a caller's sampled flag is followed as it says).
    sample_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0

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


class AlertSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Anomaly alerts on the live stream of decisions (docs/observability.md). Their state is
    in the store, so with Redis every replica judges the same history and an alert fires once.
    Each alert is an audit record (kind `alert`), a metric and, if set, a signed webhook."""

    enabled: bool = True
    # The first call ever seen on an edge (caller -> agent, caller -> model), and the first call
    # to a model by anyone.
    new_edge: bool = True
    new_model: bool = True
    # Call rate: calls on an edge in a `rate_bucket_s` bucket against the edge's own baseline
    # (an average of its past buckets, each weighing `rate_smoothing`); alert when a bucket
    # holds at least `rate_min_calls` and more than `rate_factor` times the baseline, once the
    # edge has `rate_warmup_buckets` buckets of history. 0 factor: off.
    rate_factor: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    rate_bucket_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    rate_min_calls: Annotated[int, msgspec.Meta(ge=1)] = 20
    rate_warmup_buckets: Annotated[int, msgspec.Meta(ge=1)] = 5
    rate_smoothing: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    # A burst of refusals by one caller: `denial_burst` policy denials, or `guard_burst`
    # refusals by cascade guards (depth, fan-out, tree size, cycles, killed trees), within
    # `burst_window_s`. 0: off.
    denial_burst: Annotated[int, msgspec.Meta(ge=0)] = 10
    guard_burst: Annotated[int, msgspec.Meta(ge=0)] = 10
    burst_window_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    # A budget spent faster than its window allows: more than `budget_burn_factor` times the
    # even pace (share spent over share of the window gone), once at least
    # `budget_burn_min_share` of it is spent. Checked every `budget_check_interval_s`. 0: off.
    budget_burn_factor: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    budget_burn_min_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    budget_check_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # A chain deeper than any seen on its edge during its first `depth_warmup_calls` calls
    # and since (the edge's usual depth). 0: off.
    depth_warmup_calls: Annotated[int, msgspec.Meta(ge=0)] = 20
    # A registered agent card signed with a key that agent's earlier cards were not.
    new_card_key: bool = True
    # What the state of the rules is kept for since last touched, and the alerts the console
    # lists (the newest `keep_alerts`).
    state_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 30 * 86_400
    keep_alerts: Annotated[int, msgspec.Meta(ge=10, le=100_000)] = 1000
    # POST each alert as JSON here (through the egress policy), signed with HMAC-SHA256 of
    # "<timestamp>.<body>" keyed by $`webhook_key_env`, retried `webhook_retries` times.
    webhook_url: str = ""
    webhook_key_env: str = ""
    webhook_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    webhook_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0

"""The ``[metrics]`` and ``[console]`` sections (broker/observability, broker/console)."""

from __future__ import annotations

from typing import Annotated

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

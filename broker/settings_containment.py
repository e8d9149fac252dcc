"""The ``[containment]`` section: circuit breakers and per-agent concurrency caps.

Both are kept per broker process (docs/decisions/0021, 0022): no store round trip is added to a
request, and a replica that sees an agent fail stops calling it without waiting for the others.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

_Positive = Annotated[float, msgspec.Meta(gt=0)]


class BreakerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One circuit breaker per upstream agent and per LLM provider, per broker process."""

    enabled: bool = True
    # The circuit opens when, within the last window_s, at least `failures` calls failed and
    # they were at least failure_ratio of the calls (a busy agent failing 1% stays closed).
    failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    window_s: _Positive = 10.0
    # Open: calls are refused at once for this long, then `half_open_probes` calls at a time
    # try the upstream; one success closes the circuit, one failure opens it again.
    open_s: _Positive = 5.0
    half_open_probes: Annotated[int, msgspec.Meta(ge=1)] = 1


class ContainmentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    # Calls in flight to one agent through one broker process (streams count until they end);
    # the next is refused UPSTREAM_BULKHEAD_FULL. 0: no cap. Half the default upstream pool, so
    # one slow agent cannot hold every pooled connection.
    max_concurrent_per_agent: Annotated[int, msgspec.Meta(ge=0)] = 128
    # Per-agent caps that replace max_concurrent_per_agent (0: no cap for that agent).
    agent_max_concurrent: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=dict
    )

    def max_concurrent(self, agent: str) -> int:
        return self.agent_max_concurrent.get(agent, self.max_concurrent_per_agent)

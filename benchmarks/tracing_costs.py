"""What traces cost a mediated request, in process: tracing off (the default) and on.

    .venv/bin/python -m benchmarks.tracing_costs [--number N]

Off, every call still carries a trace: the boundary reads the caller's ``traceparent`` (or draws
a new trace id) and the forward stage writes the header passed on. On, the call is also an
OpenTelemetry span with an event per stage entered (14 in the A2A pipeline), ended with its
attributes when the answer ends. Timed per request, best of 5 runs of ``--number``:

* ``off, caller sent traceparent`` / ``off, new trace``: ``begin`` + ``outbound``;
* ``on, no exporter``: the SDK's span work alone;
* ``on, batch exporter``: with the BatchSpanProcessor an OTLP export uses (its exporter drops
  the batches here: no network);
* ``on, in-memory exporter``: the tests' SimpleSpanProcessor (spans kept in a list).

The figures are compared with the broker's CPU per unary request that docs/observability.md
measured (c = 16) to give each a share.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

STAGES = 14
BROKER_CPU_PER_REQUEST_US = 2244.0  # docs/observability.md, metrics off, c = 16
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _context_only() -> Callable[[], None]:
    """The baseline: the call context every request builds anyway, no trace work."""
    from broker.types import CallContext

    async def body() -> bytes:
        return b""

    def one() -> None:
        CallContext(headers={}, read_body=body)

    return one


def _request(headers: dict[str, str]) -> Callable[[], None]:
    from broker.observability import tracing
    from broker.types import CallContext

    async def body() -> bytes:
        return b""

    events = [f"stage.S{i}" for i in range(STAGES)]
    attributes: dict[str, str | int] = {"a2a_broker.caller": "loadgen", "a2a_broker.outcome": "ok"}

    def one() -> None:
        ctx = CallContext(headers=headers, read_body=body)
        tracing.begin(ctx, "a2a")
        if ctx.span is not None:
            for name in events:
                ctx.span.add_event(name)
        tracing.outbound(ctx)
        tracing.end(ctx, attributes, "ok", "a2a SendMessage")

    return one


def _best_us(work: Callable[[], None], number: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            work()
        best = min(best, (time.perf_counter() - started) / number)
    return best * 1e6


def _provider(processor: Any | None) -> Any:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


class _DroppingExporter:
    """An exporter that accepts every batch and sends nothing (the OTLP path minus the wire)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def measure(number: int) -> dict[str, float]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from broker.observability import tracing

    found = {
        "baseline (context only)": _best_us(_context_only(), number),
        "off, caller sent traceparent": _best_us(_request({"traceparent": TRACE}), number),
        "off, new trace": _best_us(_request({}), number),
    }
    providers = {
        "on, no exporter": _provider(None),
        "on, batch exporter": _provider(BatchSpanProcessor(_DroppingExporter())),  # type: ignore[arg-type]
        "on, in-memory exporter": _provider(SimpleSpanProcessor(InMemorySpanExporter())),
    }
    for label, provider in providers.items():
        tracing.enable(provider.get_tracer("bench"))
        try:
            found[label] = _best_us(_request({"traceparent": TRACE}), number)
        finally:
            tracing.disable()
            provider.shutdown()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    load = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    print(f"load average: {' '.join(load)}; µs per request, best of 5 x {args.number}")
    found = measure(args.number)
    baseline = found.pop("baseline (context only)")
    print(f"baseline: building the call context alone {baseline:.2f} µs (subtracted below)")
    for label, micros in found.items():
        added = max(0.0, micros - baseline)
        share = added / BROKER_CPU_PER_REQUEST_US
        print(f"{label:32s} +{added:8.2f} µs  {share:6.2%} of {BROKER_CPU_PER_REQUEST_US:.0f} µs")


if __name__ == "__main__":
    main()

"""The trace context every call carries, with spans off (the default) and on."""

from __future__ import annotations

import importlib.util

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.observability import tracing
from broker.types import CallContext

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def _nothing() -> bytes:
    return b""


def _ctx(**headers: str) -> CallContext:
    return CallContext(headers=headers, read_body=_nothing)


def test_spans_off_continue_the_callers_trace_with_a_span_id_of_the_brokers() -> None:
    ctx = _ctx(traceparent=f"00-{TRACE}-00f067aa0ba902b7-00", tracestate="vendor=1")
    tracing.begin(ctx, "a2a")
    assert ctx.trace_id == TRACE and ctx.trace_flags == "00" and ctx.span is None
    assert len(ctx.span_id) == 16 and ctx.span_id != "00f067aa0ba902b7"
    assert tracing.outbound(ctx) == {
        "traceparent": f"00-{TRACE}-{ctx.span_id}-00",
        "tracestate": "vendor=1",
    }


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # the all-zero trace id is invalid
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has nothing after the flags
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    ctx = _ctx(traceparent=header)
    tracing.begin(ctx, "a2a")
    assert len(ctx.trace_id) == 32 and ctx.trace_id != TRACE


def test_a_later_version_is_read_as_version_00() -> None:
    ctx = _ctx(traceparent=f"01-{TRACE}-00f067aa0ba902b7-01-more")
    tracing.begin(ctx, "a2a")
    assert ctx.trace_id == TRACE


def test_spans_on_make_the_brokers_span_the_upstreams_parent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider.get_tracer("test"))
    try:
        ctx = _ctx(traceparent=f"00-{TRACE}-00f067aa0ba902b7-01")
        tracing.begin(ctx, "a2a")
        tracing.event(ctx, "stage.Policy")
        sent = tracing.outbound(ctx)["traceparent"]
        tracing.end(ctx, {"a2a_broker.outcome": "ok"}, "ok", "a2a SendMessage")
    finally:
        tracing.disable()
    (span,) = exporter.get_finished_spans()
    assert span.context is not None and span.parent is not None
    assert sent == f"00-{TRACE}-{span.context.span_id:016x}-01"
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert span.name == "a2a SendMessage" and [e.name for e in span.events] == ["stage.Policy"]
    assert ctx.span is None  # ended once


def test_the_access_log_line_names_the_trace(caplog: pytest.LogCaptureFixture) -> None:
    from broker.stages.boundary import log_call

    ctx = _ctx(traceparent=f"00-{TRACE}-00f067aa0ba902b7-01")
    tracing.begin(ctx, "a2a")
    with caplog.at_level("INFO", logger="a2a_broker.access"):
        log_call(ctx, "mediated", 200, {})
    (line,) = [r for r in caplog.records if r.name == "a2a_broker.access"]
    assert line.fields["trace_id"] == TRACE  # type: ignore[attr-defined]


def test_otlp_export_without_its_extra_stops_the_start_with_a_clear_message() -> None:
    from broker.observability.tracing_setup import start_tracing
    from broker.settings import SettingsError
    from broker.settings_observability import TracingSettings

    if importlib.util.find_spec("opentelemetry.exporter") is not None:
        pytest.skip("the otlp extra is installed here")
    with pytest.raises(SettingsError, match=r"a2a-broker\[otlp\]"):
        start_tracing(TracingSettings(enabled=True, exporter="otlp"))
    assert not tracing.recording()


def test_spans_off_or_to_the_process_provider() -> None:
    from broker.observability.tracing_setup import start_tracing
    from broker.settings_observability import TracingSettings

    stop = start_tracing(TracingSettings())
    assert not tracing.recording()
    stop()
    stop = start_tracing(TracingSettings(enabled=True, exporter="none"))
    try:
        assert tracing.recording()
    finally:
        stop()
    assert not tracing.recording()

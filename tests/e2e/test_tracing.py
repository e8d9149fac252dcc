"""Traces across hops: real a2a-sdk agents delegating through the broker make one trace.

The broker runs in this process (so its spans land in the OpenTelemetry SDK's in-memory
exporter), on a loopback port, with ``[tracing] enabled = true, exporter = "none"``: spans go to
the tracer provider this test installs. The hopper agents (``tests/e2e/hopper.py``, real a2a-sdk
servers and clients wrapped with the agent kit) run in their own process: ``alice`` asks ``a``,
which asks ``b`` through the broker, which asks ``c`` through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.http.app import create_app
from broker.settings import load_settings
from testkit.config import BrokerConfig
from testkit.procs import free_port, launch_service, local_url

from .fake_llm import FakeLlm
from .hopper import CREDENTIALS_ENV, hopper_card
from .mesh import new_marker, plan
from .wire import jsonrpc, user_message

pytestmark = pytest.mark.e2e
AGENTS = ["a", "b", "c"]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
MODEL = "fake-small"

_exporter = InMemorySpanExporter()
_installed: list[bool] = []


def _install_provider() -> None:
    """The process's tracer provider, once (OpenTelemetry allows setting it once)."""
    if _installed:
        return
    _installed.append(True)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_exporter))


@contextlib.asynccontextmanager
async def broker_in_process(
    tmp_path: Path, provider_url: str = ""
) -> AsyncIterator[dict[str, Any]]:
    credentials = {name: secrets.token_urlsafe(18) for name in [*AGENTS, "alice"]}
    port, hopper_port = free_port(), free_port()
    broker = local_url(port)
    cards = tmp_path / "cards"
    cards.mkdir()
    for name in AGENTS:
        card = MessageToDict(hopper_card(name, local_url(hopper_port)))
        (cards / f"{name}.json").write_text(json.dumps(card))
    config = BrokerConfig(port=port).set("registry", cards_dir=str(cards))
    config.set("audit", backend="file", dir=str(tmp_path / "audit"))
    config.set("tracing", enabled=True, exporter="none").identities(credentials)
    if provider_url:
        config.set("llm.providers.fake", base_url=provider_url, models=[MODEL])
    settings = load_settings(str(config.write(tmp_path / "broker.toml")))
    hopper = launch_service(
        "tests.e2e.hopper",
        *("--names", ",".join(AGENTS), "--broker-urls", broker),
        *("--jwks-url", f"{broker}/.well-known/jwks.json", "--issuer", broker),
        name="hopper",
        log_dir=tmp_path,
        port=hopper_port,
        env={CREDENTIALS_ENV: json.dumps({n: credentials[n] for n in AGENTS})},
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(hopper.wait_ready, timeout=60.0)
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.05)
        yield {"url": broker, "credentials": credentials, "audit": tmp_path / "audit"}
    finally:
        server.should_exit = True
        await serving
        hopper.stop()


def _hex(number: int, width: int) -> str:
    return f"{number:0{width}x}"


def _broker_spans(trace_id: str) -> list[ReadableSpan]:
    return [
        span
        for span in _exporter.get_finished_spans()
        if span.context is not None and _hex(span.context.trace_id, 32) == trace_id
    ]


async def test_a_delegation_chain_is_one_trace(tmp_path: Path) -> None:
    _install_provider()
    _exporter.clear()
    async with broker_in_process(tmp_path) as broker, httpx.AsyncClient(timeout=60) as http:
        marker = new_marker("trace")
        headers = {
            "Authorization": f"Bearer {broker['credentials']['alice']}",
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        }
        response = await jsonrpc(
            http,
            f"{broker['url']}/agents/a/jsonrpc",
            "SendMessage",
            {"message": user_message(plan(marker, "b", "c"))},
            headers=headers,
        )
        task = response.json()["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
        audit_lines = [
            json.loads(line)
            for path in sorted(broker["audit"].glob("**/*"))
            if path.is_file() and path.suffix in (".jsonl", ".log", "")
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith("{")
        ]

    spans = {_attr(span, "a2a_broker.target"): span for span in _broker_spans(CALLER_TRACE)}
    # One span per mediated hop, all in the caller's trace: alice -> a -> b -> c.
    assert set(spans) == {"a", "b", "c"}, [s.name for s in _exporter.get_finished_spans()]
    assert {_attr(s, "a2a_broker.caller") for s in spans.values()} == {"alice", "a", "b"}
    # Each hop's parent is the hop that caused it: the agent passed the broker's context on.
    assert spans["a"].parent is not None and _hex(spans["a"].parent.span_id, 16) == CALLER_SPAN
    assert spans["b"].parent is not None and spans["a"].context is not None
    assert spans["b"].parent.span_id == spans["a"].context.span_id
    assert spans["c"].parent is not None and spans["b"].context is not None
    assert spans["c"].parent.span_id == spans["b"].context.span_id
    for span in spans.values():
        assert span.name == "a2a SendMessage"
        assert _attr(span, "a2a_broker.outcome") == "ok"
        events = [event.name for event in span.events]
        # The boundary starts the span; every stage inside it is an event, in order.
        assert events[0] == "stage.Authenticate" and "stage.ChainPolicy" in events
        assert events[-1] == "stage.Forward"
    # The trace id is in every request record of the three hops.
    requests = [r for r in audit_lines if r.get("kind") == "request"]
    assert len(requests) >= 6  # a decision and an outcome per hop
    assert {r["detail"].get("trace_id") for r in requests} == {CALLER_TRACE}


async def test_a_refusal_is_a_failed_span_in_a_new_trace(tmp_path: Path) -> None:
    _install_provider()
    _exporter.clear()
    async with broker_in_process(tmp_path) as broker, httpx.AsyncClient(timeout=30) as http:
        response = await jsonrpc(
            http,
            f"{broker['url']}/agents/nobody-here/jsonrpc",
            "SendMessage",
            {"message": user_message("hello")},
            headers={"Authorization": f"Bearer {broker['credentials']['alice']}"},
        )
        assert "error" in response.json()
    finished = [s for s in _exporter.get_finished_spans() if s.context is not None]
    assert len(finished) == 1
    span = finished[0]
    assert span.parent is None  # no traceparent came: the broker started the trace
    assert not span.status.is_ok
    assert _attr(span, "a2a_broker.outcome") == "refused"


async def test_an_llm_call_is_a_span_whose_context_the_provider_gets(tmp_path: Path) -> None:
    _install_provider()
    _exporter.clear()
    provider = FakeLlm()
    await provider.start()
    try:
        async with broker_in_process(tmp_path, provider.url) as broker:
            client = openai.AsyncOpenAI(
                base_url=f"{broker['url']}/v1", api_key=broker["credentials"]["alice"],
                max_retries=0, http_client=httpx.AsyncClient(trust_env=False, timeout=10),
                default_headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )  # fmt: skip
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
    finally:
        await provider.stop()
    (span,) = _broker_spans(CALLER_TRACE)
    assert span.name == "llm:chat" and span.context is not None and span.parent is not None
    assert _hex(span.parent.span_id, 16) == CALLER_SPAN
    assert _attr(span, "a2a_broker.target") == f"model:{MODEL}"
    (seen,) = provider.recorded
    assert seen.traceparent == f"00-{CALLER_TRACE}-{_hex(span.context.span_id, 16)}-01"


def _attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)

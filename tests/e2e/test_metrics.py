"""``/metrics`` of a real broker with two worker processes, after real a2a-sdk traffic.

The scrape is parsed with prometheus-client's own text parser. Requests land on either worker;
every scrape (answered by either one) counts them all, which is what multiprocess mode is for.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.observability.tally import FLUSH_S
from testkit.audit_files import audit_text
from testkit.brokers import generate_signing_key, start_broker
from testkit.config import BrokerConfig, budget, credential_sha256
from testkit.procs import free_port

from .conftest import Upstream, _fetch_card, _static_card
from .fake_llm import COMPLETION_TOKENS, PROMPT_TOKENS
from .sdk import client_for, send_request, unique_text
from .test_llm import MODEL, LlmBroker, fake_provider, llm_broker  # noqa: F401 - fixtures

SENDS = 6
STREAMS = 2


@dataclass(frozen=True)
class MeteredBroker:
    url: str
    admin_headers: dict[str, str]
    metrics_token: str
    alice: str  # alice's broker credential


@pytest.fixture
def metered(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, upstreams: dict[str, Upstream]
) -> Iterator[MeteredBroker]:
    metrics_token = secrets.token_urlsafe(16)
    config = BrokerConfig(port=free_port()).set("server", workers=2)
    config.use_redis(redis_url, key_prefix=redis_key_prefix)
    config.set("keys", signing_key_file=generate_signing_key(tmp_path / "key.pem"))
    config.set("metrics", token_sha256=credential_sha256(metrics_token))
    config.set("budgets.agents", alice=[budget("calls", "day", 1000)])
    with start_broker(config, log_dir=tmp_path, name="metered") as broker:
        broker.register("echo", _fetch_card(upstreams["echo"].url))
        alice = broker.register("alice", _static_card("alice", upstreams["echo"].url))
        yield MeteredBroker(broker.url, broker.admin_headers, metrics_token, alice)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def _traffic(broker: MeteredBroker) -> None:
    headers = {"Authorization": f"Bearer {broker.alice}"}
    async with httpx.AsyncClient(headers=headers, timeout=10, trust_env=False) as http:
        unary = await client_for(http, f"{broker.url}/agents/echo", "JSONRPC")
        for _ in range(SENDS):
            [_ async for _ in unary.send_message(send_request(unique_text("m")))]
        streaming = await client_for(http, f"{broker.url}/agents/echo", "JSONRPC", streaming=True)
        for _ in range(STREAMS):
            [_ async for _ in streaming.send_message(send_request(unique_text("s")))]
    async with httpx.AsyncClient(timeout=10, trust_env=False) as anonymous:
        refused = await anonymous.post(f"{broker.url}/agents/echo/jsonrpc", json={})
        assert refused.status_code == 401


def _scrape(broker: MeteredBroker, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{broker.url}/metrics", headers=headers, trust_env=False, timeout=10)


async def test_metrics_count_every_worker_s_requests(metered: MeteredBroker) -> None:
    await _traffic(metered)
    # Each worker writes its batched values into the shared view within FLUSH_S (0052).
    await asyncio.sleep(FLUSH_S * 4)
    for _ in range(4):  # whichever worker answers the scrape, it sums both workers
        scraped = _scrape(metered, metered.metrics_token)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        samples = _samples(scraped.text)
        ok = {"caller": "alice", "target": "echo", "binding": "jsonrpc", "outcome": "ok"}
        assert _value(samples, "a2a_broker_requests_total", operation="SendMessage", **ok) == SENDS
        streamed = _value(
            samples, "a2a_broker_requests_total", operation="SendStreamingMessage", **ok
        )
        assert streamed == STREAMS
        refused = _value(
            samples, "a2a_broker_requests_total", caller="-", outcome="refused",
            reason="UNAUTHENTICATED",
        )  # fmt: skip
        assert refused == 1
        total = SENDS + STREAMS
        assert _value(samples, "a2a_broker_policy_decisions_total", decision="allow") == total
        added = _value(samples, "a2a_broker_broker_added_seconds_count", operation="SendMessage")
        assert added == SENDS
        assert _value(samples, "a2a_broker_request_duration_seconds_count", target="echo") == total
        assert _value(samples, "a2a_broker_open_streams", binding="jsonrpc") == 0
        # Each forwarded request: a decision and an outcome record; registrations, one each.
        assert _value(samples, "a2a_broker_audit_write_seconds_count") >= 2 * total + 2
        assert _value(samples, "a2a_broker_store_round_trip_seconds_count") > total
        assert _value(samples, "a2a_broker_store_errors_total") == 0
        budget = {"scope": "agent:alice", "metric": "calls", "window": "day"}
        assert _value(samples, "a2a_broker_budget_used", **budget) == total
        assert _value(samples, "a2a_broker_budget_limit", **budget) == 1000
        assert _value(samples, "a2a_broker_budget_remaining", **budget) == 1000 - total
        assert _value(samples, "a2a_broker_kill_switch_engaged") == 0


async def test_metrics_need_the_metrics_or_the_admin_token(metered: MeteredBroker) -> None:
    for token in (None, "wrong"):
        refused = _scrape(metered, token)
        assert refused.status_code == 401
        assert refused.json()["error"]["details"][0]["reason"] == "METRICS_UNAUTHENTICATED"
    admin_token = metered.admin_headers["Authorization"].removeprefix("Bearer ")
    assert _scrape(metered, admin_token).status_code == 200


def test_a_separate_metrics_port_serves_without_a_token(tmp_path: Path) -> None:
    """``[metrics] port``: `serve` also listens there, for a scraper on a private network."""
    metrics_port = free_port()
    config = BrokerConfig(port=free_port()).set("metrics", port=metrics_port)
    with start_broker(config, log_dir=tmp_path, name="separate") as broker:
        for _ in range(3):  # three refusals: an unauthenticated caller
            httpx.post(broker.jsonrpc_url("echo"), json={}, trust_env=False)
        time.sleep(FLUSH_S * 4)  # the worker writes its batch within FLUSH_S (0052)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False)
        assert scraped.status_code == 200
        samples = _samples(scraped.text)
        refused = {"caller": "-", "outcome": "refused", "reason": "UNAUTHENTICATED"}
        assert _value(samples, "a2a_broker_requests_total", **refused) == 3
        # The broker's own port still wants a token.
        closed = httpx.get(f"{broker.url}/metrics", trust_env=False)
        assert closed.status_code == 401


def test_audit_export_lag_is_a_gauge_per_sink_and_chain(tmp_path: Path) -> None:
    config = BrokerConfig(port=free_port())
    config.set("audit.export", enabled=True, poll_interval_s=0.1)
    config.set("audit.export", sinks=[{"name": "siem", "kind": "jsonl", "path": "siem.jsonl"}])
    with start_broker(config, log_dir=tmp_path, name="exporting") as broker:
        url = broker.url
        headers = broker.admin_headers
        for _ in range(3):  # three refusals, three audit records to export
            httpx.post(f"{url}/agents/echo/jsonrpc", json={}, trust_env=False)
        deadline, lags = time.monotonic() + 10, {}
        while time.monotonic() < deadline:
            scraped = httpx.get(f"{url}/metrics", headers=headers, trust_env=False)
            lags = {
                labels: value
                for (name, labels), value in _samples(scraped.text).items()
                if name == "a2a_broker_audit_export_lag_records"
            }
            if lags and all(v == 0 for v in lags.values()):
                break
            time.sleep(0.1)  # the exporter runs in the broker process: poll
        assert lags, "no export lag gauge"
        assert all(dict(labels)["sink"] == "siem" for labels in lags)
        assert all(value == 0 for value in lags.values())  # the sink caught up
        shipped = (tmp_path / "siem.jsonl").read_text().splitlines()
        assert sum("auth.failure" in line for line in shipped) == 3


async def test_llm_tokens_and_cost_by_model(llm_broker: LlmBroker) -> None:  # noqa: F811
    """Two chat calls (one streamed) and one for a model the broker does not serve."""
    client = llm_broker.client("alice")
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    [_ async for _ in stream]
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=[])
    await asyncio.sleep(FLUSH_S * 4)
    headers = {"Authorization": f"Bearer {llm_broker.admin_token}"}
    async with httpx.AsyncClient(headers=headers, trust_env=False) as http:
        scraped = await http.get(f"{llm_broker.url}/metrics")
    samples = _samples(scraped.text)
    tokens = "a2a_broker_llm_tokens_total"
    assert _value(samples, tokens, model=MODEL, direction="in") == 2 * PROMPT_TOKENS
    assert _value(samples, tokens, model=MODEL, direction="out") == 2 * COMPLETION_TOKENS
    # Every call here has the fake provider's usage, so each was charged what the audit's
    # outcome records say such a call costs (the folder may hold other tests' calls too).
    charged = {
        int(record["cost_micro"])
        for path in llm_broker.audit_dir.glob("audit-*.jsonl")
        for line in audit_text(path).splitlines()
        if '"phase":"outcome"' in line and '"llm:chat"' in line
        and (record := json.loads(line))["tokens_out"] == COMPLETION_TOKENS
    }  # fmt: skip
    [per_call] = charged
    assert per_call > 0
    assert _value(samples, "a2a_broker_llm_cost_micro_total", model=MODEL) == 2 * per_call
    calls = {"caller": "alice", "operation": "llm:chat", "binding": "openai"}
    served = {"target": f"model:{MODEL}", "outcome": "ok"}
    assert _value(samples, "a2a_broker_requests_total", **served, **calls) == 2
    unknown = _value(
        samples, "a2a_broker_requests_total", target="-", reason="LLM_MODEL_NOT_FOUND", **calls
    )
    assert unknown == 1

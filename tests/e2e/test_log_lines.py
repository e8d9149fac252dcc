"""Every line the session broker logged has the same shape: ISO time, level, a2a_broker logger."""

from __future__ import annotations

import json

import httpx

from .conftest import Broker

ISO_MS_LEN = len("2026-12-05T13:25:21.692Z")


async def test_every_broker_log_line_is_json_with_iso_time_and_one_logger_family(
    broker: Broker, alice_http: httpx.AsyncClient
) -> None:
    await alice_http.get(f"{broker.url}/agents/echo/.well-known/agent-card.json")
    await alice_http.post(broker.jsonrpc_url("nobody"), json={})  # a refused request logs a line

    lines = [line for line in broker.log.read_text().splitlines() if line.strip()]

    assert any('"event":"mediated"' in line for line in lines)
    for line in lines:
        entry = json.loads(line)
        ts = entry["ts"]
        assert isinstance(ts, str) and ts.endswith("Z") and len(ts) == ISO_MS_LEN, line
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert entry["logger"] == "a2a_broker" or entry["logger"].startswith("a2a_broker."), line

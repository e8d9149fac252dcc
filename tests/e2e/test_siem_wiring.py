"""A broker with [audit.export] ships its audit records to the configured SIEM sink as OCSF."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from testkit.brokers import start_broker
from testkit.config import BrokerConfig
from testkit.procs import closed_url, free_port

from .conftest import _static_card


def test_records_reach_the_sink_as_ocsf_events(tmp_path: Path) -> None:
    config = BrokerConfig(port=free_port())  # loopback: registration judges the card's URL
    config.set("audit.export", enabled=True, poll_interval_s=0.1)
    config.set("audit.export", sinks=[{"name": "siem", "kind": "jsonl", "path": "siem.jsonl"}])
    with start_broker(config, log_dir=tmp_path, name="siem-broker") as broker:
        broker.register("zed", _static_card("zed", closed_url()))
        refused = httpx.post(broker.jsonrpc_url("zed"), json={})
        assert refused.status_code == 401
        rid = refused.headers["a2a-broker-request-id"]
        sink = tmp_path / "siem.jsonl"
        deadline = time.monotonic() + 10
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            if sink.exists():
                events = [json.loads(line) for line in sink.read_text().splitlines()]
                if any(rid in json.dumps(e) for e in events):
                    break
            time.sleep(0.1)  # another process's file can only be polled
    kinds = [e["unmapped"]["kind"] for e in events]  # type: ignore[index]
    assert "registry.change" in kinds and "auth.failure" in kinds
    assert all(e["class_uid"] == 6003 for e in events)
    seqs = [e["metadata"]["sequence"] for e in events]  # type: ignore[index]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, none twice

"""A broker with [audit.export] ships its audit records to the configured SIEM sink as OCSF."""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

import httpx

from .conftest import REPO_ROOT, _static_card
from .harness import ServerProcess, free_port


def test_records_reach_the_sink_as_ocsf_events(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f"[server]\nport = {port}\n[policy]\nallow_all = true\n"
        # The card points at loopback, which registration now judges like a call.
        "[egress]\nallow_loopback = true\n"
        "[audit.export]\nenabled = true\npoll_interval_s = 0.1\n"
        '[[audit.export.sinks]]\nname = "siem"\nkind = "jsonl"\npath = "siem.jsonl"\n'
    )
    admin = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "broker", "serve", "--config", str(config)]
    with ServerProcess.start(
        argv,
        ready_url=f"{url}/healthz",
        env={"A2A_BROKER_ADMIN_TOKEN": admin},
        cwd=REPO_ROOT,
        log_dir=tmp_path,
        name="siem-broker",
    ):
        card = _static_card("zed", f"http://127.0.0.1:{free_port()}")
        registered = httpx.post(
            f"{url}/admin/agents",
            json={"name": "zed", "card": card},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert registered.status_code == 201
        refused = httpx.post(f"{url}/agents/zed/jsonrpc", json={})
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

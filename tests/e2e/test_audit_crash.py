"""A broker killed (SIGKILL) in the middle of load leaves a log that verifies, and every request
it acknowledged has its decision record: the record is durable before the request is forwarded
(or, with ``durable_before = "reply"``, written before it is forwarded and durable before the
answer is relayed).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testkit.audit_files import audit_text
from testkit.brokers import generate_signing_key, start_broker
from testkit.config import BrokerConfig
from testkit.procs import REPO_ROOT, Process, closed_url, free_port

from .conftest import Upstream, _fetch_card, _static_card
from .wire import A2A_V1, jsonrpc_request, user_message

REQUEST_ID = "a2a-broker-request-id"
ACKED_BEFORE_KILL = 60


async def _load(
    url: str, credential: str, acked: list[str], enough: asyncio.Event, stop: asyncio.Event
) -> None:
    headers = {**A2A_V1, "Authorization": f"Bearer {credential}"}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        while not stop.is_set():
            body = jsonrpc_request("SendMessage", {"message": user_message("load")})
            try:
                response = await http.post(url, json=body, headers=headers)
            except httpx.HTTPError:
                return  # the broker is gone
            if response.status_code == 200 and "result" in response.json():
                acked.append(response.headers[REQUEST_ID])
                if len(acked) >= ACKED_BEFORE_KILL:
                    enough.set()


async def _load_then_kill(url: str, credential: str, proc: Process) -> list[str]:
    """Eight callers keep the broker busy; once enough answers came back, SIGKILL it."""
    acked: list[str] = []
    enough, stop = asyncio.Event(), asyncio.Event()
    loaders = [
        asyncio.create_task(_load(f"{url}/agents/echo/jsonrpc", credential, acked, enough, stop))
        for _ in range(8)
    ]
    await asyncio.wait_for(enough.wait(), 30)
    proc.popen.send_signal(signal.SIGKILL)  # no shutdown, no final checkpoint
    stop.set()
    await asyncio.gather(*loaders)
    return acked


@pytest.mark.parametrize("durable_before", ["forward", "reply"])
def test_sigkill_under_load_loses_no_acknowledged_decision(
    tmp_path: Path, upstreams: dict[str, Upstream], durable_before: str
) -> None:
    key = generate_signing_key(tmp_path / "key.pem")
    config = BrokerConfig(port=free_port()).set("keys", signing_key_file=key)
    config.set("audit", checkpoint_every=25, durable_before=durable_before)
    with start_broker(config, log_dir=tmp_path, name="crash") as broker:
        broker.register("echo", _fetch_card(upstreams["echo"].url))
        credential = broker.register("loader", _static_card("loader", closed_url()))
        acked = asyncio.run(_load_then_kill(broker.url, credential, broker.process))

    folder = tmp_path / "var" / "audit"
    verified = subprocess.run(
        [sys.executable, "-m", "broker", "audit", "verify", str(folder), "--keys", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = [
        json.loads(line)
        for path in folder.glob("audit-*.jsonl")
        for line in audit_text(path).splitlines()
        if line.strip()
    ]
    forwarded = {r["request_id"] for r in records if r["detail"].get("phase") == "forward"}
    missing = [rid for rid in acked if rid not in forwarded]
    assert not missing, f"{len(missing)} acknowledged requests have no decision record"
    assert len(acked) >= ACKED_BEFORE_KILL

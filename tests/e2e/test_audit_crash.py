"""A broker killed (SIGKILL) in the middle of load leaves a log that verifies, and every request
it acknowledged has its decision record: the record is durable before the request is forwarded
(or, with ``durable_before = "reply"``, written before it is forwarded and durable before the
answer is relayed).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import REPO_ROOT, Upstream, _fetch_card, _static_card
from .harness import ServerProcess, free_port
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


async def _load_then_kill(url: str, credential: str, proc: ServerProcess) -> list[str]:
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


def _register(url: str, admin: str, name: str, card: dict[str, object]) -> str:
    headers = {"Authorization": f"Bearer {admin}"}
    r = httpx.post(f"{url}/admin/agents", json={"name": name, "card": card}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["credential"])


@pytest.mark.parametrize("durable_before", ["forward", "reply"])
def test_sigkill_under_load_loses_no_acknowledged_decision(
    tmp_path: Path, upstreams: dict[str, Upstream], durable_before: str
) -> None:
    port = free_port()
    key = tmp_path / "key.pem"
    subprocess.run([sys.executable, "-m", "broker", "keys", "generate", str(key)], check=True)
    config = tmp_path / "broker.toml"
    config.write_text(
        f"[server]\nport = {port}\n[egress]\nallow_loopback = true\n[policy]\nallow_all = true\n"
        f'[keys]\nsigning_key_file = "{key}"\n[audit]\ncheckpoint_every = 25\n'
        f'durable_before = "{durable_before}"\n'
    )
    admin = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "broker", "serve", "--config", str(config)]
    proc = ServerProcess.launch(
        argv, env={"A2A_BROKER_ADMIN_TOKEN": admin}, cwd=REPO_ROOT, log_dir=tmp_path, name="crash"
    )
    try:
        proc.wait_ready(f"{url}/healthz")
        _register(url, admin, "echo", _fetch_card(upstreams["echo"].url))
        closed = f"http://127.0.0.1:{free_port()}"
        credential = _register(url, admin, "loader", _static_card("loader", closed))
        acked = asyncio.run(_load_then_kill(url, credential, proc))
    finally:
        proc.stop()

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
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    forwarded = {r["request_id"] for r in records if r["detail"].get("phase") == "forward"}
    missing = [rid for rid in acked if rid not in forwarded]
    assert not missing, f"{len(missing)} acknowledged requests have no decision record"
    assert len(acked) >= ACKED_BEFORE_KILL

"""Budgets changed live through the admin CLI, on two broker processes sharing one Redis.

alice's config gives her 100 calls a day. ``a2a-broker budgets set agent:alice --limit
calls/lifetime=2`` through broker A takes effect on A at once (the third send is refused) and on
B within about a second (``broker.budgets.scopes.REFRESH_S``); ``budgets unset`` brings the config
back on both. Sends are A2A JSON-RPC ``SendMessage`` calls to the echo agent.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from testkit.audit_files import audit_text
from testkit.brokers import launch_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import REPO_ROOT, all_stopped, closed_url, free_port

from .conftest import (
    ECHO_UPSTREAM_TOKEN,
    ECHO_UPSTREAM_TOKEN_ENV,
    Upstream,
    _fetch_card,
    _static_card,
    register_all,
)
from .wire import jsonrpc, user_message

REFRESH_BOUND_S = 2.5  # REFRESH_S (1 s) plus generous slack for a loaded CI machine
SCOPE = "agent:alice"


@dataclass(frozen=True)
class Pair:
    urls: tuple[str, str]
    homes: tuple[Path, Path]
    admin_token: str
    alice: str  # alice's broker credential


@pytest.fixture(scope="module")
def pair(upstreams: dict[str, Upstream], redis_url: str, logs: Path) -> Iterator[Pair]:
    prefix = f"e2e-budget-admin-{uuid.uuid4().hex[:8]}"
    env = {ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN}
    homes = (logs / "budget-admin-a", logs / "budget-admin-b")
    config = BrokerConfig(port=0).use_redis(redis_url, key_prefix=prefix)
    config.set("server", log_level="warning").set("audit", fsync=False)
    config.set("upstream_credentials.echo", kind="bearer", env=ECHO_UPSTREAM_TOKEN_ENV)
    config.set("budgets.agents", alice=[budget("calls", "day", 100)])
    admin = secrets.token_urlsafe(24)
    try:
        with all_stopped([]) as brokers:
            for home in homes:
                port = free_port()
                brokers.append(
                    launch_broker(config.copy(port=port), log_dir=home, admin_token=admin, env=env)
                )
            for broker in brokers:
                broker.wait_ready()
            cards = {"echo": _fetch_card(upstreams["echo"].url)}
            cards["alice"] = _static_card("alice", closed_url())  # alice only calls
            credentials = register_all(brokers[0], cards)  # the registry is shared through Redis
            yield Pair((brokers[0].url, brokers[1].url), homes, admin, credentials["alice"])
    finally:
        _drop_keys(redis_url, prefix)


def _drop_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def _send(http: httpx.AsyncClient, pair: Pair, broker: int) -> httpx.Response:
    url = f"{pair.urls[broker]}/agents/echo/jsonrpc"
    headers = {"Authorization": f"Bearer {pair.alice}"}
    params = {"message": user_message(uuid.uuid4().hex)}
    return await jsonrpc(http, url, "SendMessage", params, headers=headers)


async def _cli(pair: Pair, *args: str) -> Any:
    """Run ``a2a-broker budgets … ARGS`` against broker A; its JSON output (None if empty)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "budgets",
        "--url",
        pair.urls[0],
        f"--admin-token={pair.admin_token}",  # "=": a token may start with "-"
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out) if out.strip() else None


async def _until(http: httpx.AsyncClient, pair: Pair, *, refused: bool, since: float) -> None:
    """Send through broker B until it is ``refused`` (or served), within ``REFRESH_BOUND_S``."""
    while True:
        response = await _send(http, pair, 1)
        if _refused(response) is refused:
            return
        assert time.monotonic() - since < REFRESH_BOUND_S, f"broker B still: {response.text}"
        await asyncio.sleep(0.05)


def _ok(response: httpx.Response) -> bool:
    return response.status_code == 200 and "result" in response.json()


def _refused(response: httpx.Response) -> bool:
    """A JSON-RPC error (HTTP 200, as the binding answers) naming BUDGET_EXHAUSTED."""
    reasons = [d.get("reason") for d in response.json().get("error", {}).get("data", [])]
    return reasons == ["BUDGET_EXHAUSTED"]


async def test_limits_set_and_unset_live(pair: Pair) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        for broker in (0, 1):  # both have loaded the (empty) live limits
            assert _ok(await _send(http, pair, broker))

        set_at = time.monotonic()
        shown = await _cli(pair, "set", SCOPE, "--limit", "calls/lifetime=2")
        assert shown == {
            "scope": SCOPE,
            "source": "live",
            "limits": [{"metric": "calls", "window": "lifetime", "limit": 2}],
        }
        sends = [await _send(http, pair, 0) for _ in range(3)]  # immediate on broker A
        assert [_ok(r) for r in sends] == [True, True, False]
        assert _refused(sends[2]), sends[2].text
        assert "lifetime" in sends[2].text
        await _until(
            http, pair, refused=True, since=set_at
        )  # and within about a second on broker B

        [budget] = (await _cli(pair, "show", "--agent", "alice"))["budgets"]
        assert (budget["window"], budget["source"]) == ("lifetime", "live")
        assert (budget["used"], budget["reserved"], budget["remaining"]) == (2, 0, 0)

        unset_at = time.monotonic()
        assert await _cli(pair, "unset", SCOPE) is None
        assert _ok(await _send(http, pair, 0))  # the config again, at once
        await _until(http, pair, refused=False, since=unset_at)
        [budget] = (await _cli(pair, "show", "--agent", "alice"))["budgets"]
        assert (budget["window"], budget["source"], budget["limit"]) == ("day", "config", 100)

    assert await _budget_audit(pair.homes[0]) == [("set", SCOPE), ("delete", SCOPE)]


async def test_bad_requests_name_the_problem(pair: Pair) -> None:
    headers = {"Authorization": f"Bearer {pair.admin_token}"}
    base_url = f"{pair.urls[0]}/admin"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, trust_env=False) as admin:
        bad_window = {"limits": [{"metric": "calls", "window": "week", "limit": 1}]}
        response = await admin.put("/budgets/agent%3Abob", json=bad_window)
        assert response.status_code == 400
        assert "INVALID_ADMIN_REQUEST" in response.text and "window" in response.text
        assert "(valid: 'minute', 'hour', 'day', 'month', 'lifetime')" in response.text
        response = await admin.put("/budgets/planet%3Amars", json={"limits": []})
        assert response.status_code == 400 and "unknown budget scope" in response.text
        response = await admin.delete("/budgets/agent%3Anobody")
        assert response.status_code == 400 and "No live limits" in response.text


async def _budget_audit(home: Path) -> list[tuple[str, str]]:
    """(action, scope) of broker A's "budget" audit records (waits briefly for both)."""
    found: list[tuple[str, str]] = []
    for _ in range(40):
        records = [
            json.loads(line)
            for path in (home / "var" / "audit").glob("audit-*.jsonl")
            for line in audit_text(path).splitlines()
            if line.strip()
        ]
        found = [
            (r["detail"]["action"], r["detail"]["scope"]) for r in records if r["kind"] == "budget"
        ]
        if len(found) >= 2:
            break
        await asyncio.sleep(0.05)
    return found

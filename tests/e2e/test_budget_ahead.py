"""Calls reserved ahead, through two real broker processes sharing one Redis (decision 0109).

alice may make 60 calls in all. Both brokers keep up to 4 calls reserved ahead per set of
budgets while at least 10 would be left (``[budgets] reserve_ahead = 4``,
``reserve_ahead_headroom = 10``). The real a2a-sdk client sends to the echo agent (a real a2a-sdk
agent) through both brokers at once, 12 in flight, 90 sends:

* the calls went out on reserves made ahead (the brokers' ``budget_calls_reserved_total``);
* never more than 60 were answered, and every answered call is charged exactly once;
* refused early by at most what the other broker held ahead; the refusals name
  ``BUDGET_EXHAUSTED``;
* what was reserved ahead is given back within a couple of seconds, and then the rest of the
  budget fits exactly: 60 answered in all.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client.errors import A2AClientError
from a2a_broker_agent import broker_refusal

from broker.errors import BudgetExhaustedError
from testkit.brokers import launch_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import all_stopped, closed_url, free_port

from .conftest import (
    ECHO_UPSTREAM_TOKEN,
    ECHO_UPSTREAM_TOKEN_ENV,
    Upstream,
    _fetch_card,
    _static_card,
    register_all,
)
from .sdk import client_for, send_request, unique_text
from .test_budget_admin import _drop_keys

LIMIT = 60
MOST = 4
HEADROOM = 10
SENDS = 90
IN_FLIGHT = 12
GIVEN_BACK_WITHIN_S = 5.0  # two sweeps of MAX_AGE_S (1 s), with slack for a loaded machine


@dataclass(frozen=True)
class Pair:
    urls: tuple[str, str]
    admin_headers: dict[str, str]
    alice: str


@pytest.fixture(scope="module")
def pair(upstreams: dict[str, Upstream], redis_url: str, logs: Path) -> Iterator[Pair]:
    prefix = f"e2e-budget-ahead-{uuid.uuid4().hex[:8]}"
    env = {ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN}
    config = BrokerConfig(port=0).use_redis(redis_url, key_prefix=prefix)
    config.set("server", log_level="warning").set("audit", fsync=False)
    config.set("upstream_credentials.echo", kind="bearer", env=ECHO_UPSTREAM_TOKEN_ENV)
    config.set("budgets", reserve_ahead=MOST, reserve_ahead_headroom=HEADROOM)
    config.set("budgets.agents", alice=[budget("calls", "lifetime", LIMIT)])
    admin = secrets.token_urlsafe(24)
    try:
        with all_stopped([]) as brokers:
            for name in ("ahead-a", "ahead-b"):
                replica = config.copy(port=free_port())
                launched = launch_broker(replica, log_dir=logs / name, admin_token=admin, env=env)
                brokers.append(launched)
            for broker in brokers:
                broker.wait_ready()
            cards = {"echo": _fetch_card(upstreams["echo"].url)}
            cards["alice"] = _static_card("alice", closed_url())  # alice only calls
            credentials = register_all(brokers[0], cards)  # the registry is shared through Redis
            yield Pair(
                (brokers[0].url, brokers[1].url), brokers[0].admin_headers, credentials["alice"]
            )
    finally:
        _drop_keys(redis_url, prefix)


async def _send(http: httpx.AsyncClient, url: str) -> str:
    """One SendMessage through the broker at ``url`` with the SDK client: "ok", or the
    broker's reason for refusing it."""
    # HTTP+JSON: its errors carry the broker's reason (docs/clients.md)
    client = await client_for(http, f"{url}/agents/echo", "HTTP+JSON")
    try:
        events = [event async for event in client.send_message(send_request(unique_text("a")))]
    except A2AClientError as exc:
        refusal = broker_refusal(exc)
        assert refusal is not None, exc
        return refusal.reason
    finally:
        await client.close()
    assert events, "no answer"
    return "ok"


async def _budget(http: httpx.AsyncClient, pair: Pair) -> dict[str, Any]:
    response = await http.get(
        f"{pair.urls[0]}/admin/budgets", params={"agent": "alice"}, headers=pair.admin_headers
    )
    assert response.status_code == 200, response.text
    [found] = response.json()["budgets"]
    return dict(found)


async def _reserved_ahead(http: httpx.AsyncClient, pair: Pair) -> int:
    """``budget_calls_reserved_total{how="ahead"}`` over both brokers."""
    total = 0
    for url in pair.urls:
        text = (await http.get(f"{url}/metrics", headers=pair.admin_headers)).text
        found = re.search(r'^a2a_broker_budget_calls_reserved_total\{how="ahead"\} (\S+)$', text,
                          re.MULTILINE)  # fmt: skip
        total += int(float(found.group(1))) if found else 0
    return total


async def test_calls_reserved_ahead_never_overspend_and_the_budget_ends_exact(pair: Pair) -> None:
    headers = {"Authorization": f"Bearer {pair.alice}"}
    async with httpx.AsyncClient(headers=headers, timeout=15, trust_env=False) as http:
        gate = asyncio.Semaphore(IN_FLIGHT)
        peaks: list[int] = []

        async def one(n: int) -> str:
            async with gate:
                outcome = await _send(http, pair.urls[n % 2])
                status = await _budget(http, pair)
                peaks.append(status["used"] + status["reserved"])
                return outcome

        outcomes = await asyncio.gather(*(one(n) for n in range(SENDS)))
        answered = outcomes.count("ok")
        assert set(outcomes) <= {"ok", BudgetExhaustedError.reason}, outcomes
        assert max(peaks) <= LIMIT
        assert LIMIT - 2 * MOST <= answered <= LIMIT
        assert await _reserved_ahead(http, pair) > 0  # the sends did go out on reserves ahead

        deadline = time.monotonic() + GIVEN_BACK_WITHIN_S
        while (status := await _budget(http, pair))["reserved"]:
            assert time.monotonic() < deadline, f"still reserved: {status}"
            await asyncio.sleep(0.1)
        assert status["used"] == answered  # each answered call charged once

        more = 0  # the rest fits exactly, through either broker
        while (outcome := await _send(http, pair.urls[more % 2])) == "ok":
            more += 1
        assert outcome == BudgetExhaustedError.reason
        assert answered + more == LIMIT
        status = await _budget(http, pair)
        assert (status["used"], status["reserved"], status["remaining"]) == (LIMIT, 0, 0)

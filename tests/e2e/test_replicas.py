"""Two broker processes on one Redis behave as one broker; a Redis outage fails closed.

Registrations, credentials, suspensions and task ownership made through one replica hold on the
other at once. While Redis does not answer, both refuse with a retryable 503 and forward nothing;
when it answers again they recover by themselves.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.errors import StoreUnavailableError, TaskNotFoundError
from testkit.brokers import generate_signing_key, launch_broker
from testkit.config import BrokerConfig
from testkit.procs import all_stopped, free_port

from .conftest import Upstream, _fetch_card, _static_card
from .wire import assert_jsonrpc_error, jsonrpc, recorded_requests, user_message


@dataclass(frozen=True)
class Replicas:
    urls: tuple[str, str]
    admin_headers: dict[str, str]
    redis: subprocess.Popen[bytes]


@pytest.fixture
def replicas(
    tmp_path: Path, redis_server_factory: Callable[[int], subprocess.Popen[bytes]]
) -> Iterator[Replicas]:
    redis_port = free_port()
    redis = redis_server_factory(redis_port)
    key_file = generate_signing_key(tmp_path / "broker-key.pem")
    config = BrokerConfig(port=0).set(
        "store", backend="redis", redis_url=f"redis://127.0.0.1:{redis_port}/0"
    )
    config.set("keys", signing_key_file=key_file).set("limits", upstream_timeout_s=3.0)
    admin = secrets.token_urlsafe(16)
    with all_stopped([]) as brokers:
        for i in range(2):
            twin = config.copy(port=free_port())
            brokers.append(
                launch_broker(twin, log_dir=tmp_path, name=f"replica{i}", admin_token=admin)
            )
        for broker in brokers:
            broker.wait_ready()
        urls = (brokers[0].url, brokers[1].url)
        yield Replicas(urls, {"Authorization": f"Bearer {admin}"}, redis)


def _register(replicas: Replicas, via: int, name: str, card: dict[str, object]) -> str:
    response = httpx.post(
        f"{replicas.urls[via]}/admin/agents",
        headers=replicas.admin_headers,
        trust_env=False,
        json={"name": name, "card": card},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["credential"])


def _kid(card: dict[str, Any]) -> str:
    protected = card["signatures"][0]["protected"]
    return str(json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))["kid"])


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def test_state_made_on_one_replica_holds_on_the_other(
    replicas: Replicas, upstreams: dict[str, Upstream]
) -> None:
    a, b = replicas.urls
    _register(replicas, 0, "echo", _fetch_card(upstreams["echo"].url))
    closed = f"http://127.0.0.1:{free_port()}"
    alice = _register(replicas, 1, "alice", _static_card("alice", closed))
    bob = _register(replicas, 0, "bob", _static_card("bob", closed))
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        cards = [
            (await http.get(f"{u}/agents/echo/.well-known/agent-card.json")).json() for u in (a, b)
        ]
        # Same signing key on both replicas (each names its own JWKS URL in jku).
        assert _kid(cards[0]) == _kid(cards[1])

        sent = await jsonrpc(
            http,
            f"{a}/agents/echo/jsonrpc",
            "SendMessage",
            {"message": user_message("replica")},
            headers=_bearer(alice),
        )
        task_id = sent.json()["result"]["task"]["id"]
        got = await jsonrpc(
            http, f"{b}/agents/echo/jsonrpc", "GetTask", {"id": task_id}, headers=_bearer(alice)
        )
        assert got.json()["result"]["id"] == task_id
        stolen = await jsonrpc(
            http, f"{b}/agents/echo/jsonrpc", "GetTask", {"id": task_id}, headers=_bearer(bob)
        )
        assert_jsonrpc_error(stolen, TaskNotFoundError)

        suspend = await http.post(f"{b}/admin/agents/echo/suspend", headers=replicas.admin_headers)
        assert suspend.status_code == 200
        suspended_at = time.monotonic()
        # The other replica may answer from its half-second read cache for a moment; within a
        # second it must refuse (and then always).
        while True:
            refused = await jsonrpc(
                http,
                f"{a}/agents/echo/jsonrpc",
                "SendMessage",
                {"message": user_message("after suspend")},
                headers=_bearer(alice),
            )
            if "error" in refused.json():
                break
            assert time.monotonic() - suspended_at < 1.0, "replica A still forwards after 1 s"
        assert refused.json()["error"]["data"][0]["reason"] == "AGENT_SUSPENDED"


async def test_redis_outage_fails_closed_and_recovers(
    replicas: Replicas, upstreams: dict[str, Upstream]
) -> None:
    a, b = replicas.urls
    _register(replicas, 0, "echo", _fetch_card(upstreams["echo"].url))
    alice = _register(
        replicas, 0, "alice", _static_card("alice", f"http://127.0.0.1:{free_port()}")
    )
    marker = f"outage-{secrets.token_hex(4)}"
    os.kill(replicas.redis.pid, signal.SIGSTOP)  # Redis stops answering, connections stay open
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=15) as http:
            for url in (a, b):
                response = await jsonrpc(
                    http,
                    f"{url}/agents/echo/jsonrpc",
                    "SendMessage",
                    {"message": user_message(marker)},
                    headers=_bearer(alice),
                )
                assert response.status_code == StoreUnavailableError.http_status
                assert response.headers["retry-after"] == "1"
                assert_jsonrpc_error(response, StoreUnavailableError)
                ready = await http.get(f"{url}/readyz")
                assert ready.status_code == 503
    finally:
        os.kill(replicas.redis.pid, signal.SIGCONT)
    async with httpx.AsyncClient(trust_env=False, timeout=15) as http:
        seen = await recorded_requests(http, upstreams["echo"].url, marker)
        assert not seen, "a request was forwarded unchecked while Redis was down"
        for url in (a, b):
            assert (await http.get(f"{url}/readyz")).status_code == 200
            response = await jsonrpc(
                http,
                f"{url}/agents/echo/jsonrpc",
                "SendMessage",
                {"message": user_message("back")},
                headers=_bearer(alice),
            )
            assert response.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"

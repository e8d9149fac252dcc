"""Operator stops made through one replica hold on the other at once (issue 12).

Two brokers on one Redis, each caching registry reads for ``read_cache_ttl_s = 60``: a
suspension, a resume and the global kill switch made through broker 1 are seen by broker 2 long
before that cache could expire, which only the control channel (Redis pub/sub) explains. This
asserts that propagation works; how fast it is, is measured by
``benchmarks/killswitch_propagation.py`` (docs/governance.md). Also: every request's audit
record names the policy version that decided it (docs/policy.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from broker.errors import AgentSuspendedError, KillSwitchEngagedError
from broker.settings import ADMIN_TOKEN_ENV
from testkit.audit_files import audit_text
from testkit.procs import REPO_ROOT

from .mesh import Mesh, new_marker, originate, plan, start_mesh
from .wire import assert_jsonrpc_error

AGENTS = ["b", "c"]
POLICY = "\n".join([
    "g, alice, role:user", "g, b, role:agent", "g, c, role:agent",
    "p, role:user, *, originate, allow", "p, role:user, *, SendMessage:*, allow",
    "p, role:agent, *, SendMessage:*, allow", "",
])  # fmt: skip
CACHE_TTL_S = 60.0
DEADLINE_S = 10.0  # far below CACHE_TTL_S


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("killswitch")
    with start_mesh(
        folder, redis_url, agents=AGENTS, callers=["alice"], policy=POLICY,
        tables={"store": {"read_cache_ttl_s": CACHE_TTL_S}},
    ) as started:  # fmt: skip
        yield started


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield client


def reason_of(response: httpx.Response) -> str:
    body = response.json()
    return "ok" if "result" in body else str(body["error"]["data"][0]["reason"])


async def within(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        await asyncio.sleep(0.02)


def kill_cli(mesh: Mesh, via: int, *args: str) -> dict[str, object]:
    # The admin token from the environment, as operators pass it (a token may start with "-").
    token = mesh.admin_headers["Authorization"].removeprefix("Bearer ")
    done = subprocess.run(
        [sys.executable, "-m", "broker", "kill", *args, "--url", mesh.brokers[via]],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
        env={**os.environ, ADMIN_TOKEN_ENV: token},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = httpx.Response(200, content=done.stdout).json()
    return result


async def test_a_suspension_and_a_resume_through_broker_1_hold_on_broker_2_at_once(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    async def on_broker_2() -> str:
        return reason_of(await originate(http, mesh, "alice", "b", plan(new_marker("s")), via=1))

    async def broker_2_says(reason: str) -> bool:
        return await on_broker_2() == reason

    assert await on_broker_2() == "ok"  # broker 2 now holds b's record in its cache
    admin = f"{mesh.brokers[0]}/admin/agents/b"
    assert (await http.post(f"{admin}/suspend", headers=mesh.admin_headers)).status_code == 200
    try:
        await within(lambda: broker_2_says(AgentSuspendedError.reason), "suspension")
    finally:
        assert (await http.post(f"{admin}/resume", headers=mesh.admin_headers)).status_code == 200
    await within(lambda: broker_2_says("ok"), "resume")


async def test_the_global_kill_switch_stops_every_hop_on_every_replica_until_lifted(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    async def call(via: int, target: str = "c") -> httpx.Response:
        return await originate(http, mesh, "alice", target, plan(new_marker("k")), via=via)

    async def everywhere(reason: str) -> bool:
        return [reason_of(await call(via)) for via in (0, 1)] == [reason] * 2

    assert await everywhere("ok")
    engaged = await asyncio.to_thread(kill_cli, mesh, 0, "--all", "--reason", "drill")
    assert engaged["engaged"] is True and engaged["newly_engaged"] is True
    assert engaged["reason"] == "drill"
    try:
        await within(lambda: everywhere(KillSwitchEngagedError.reason), "kill switch")
        for via in (0, 1):
            assert_jsonrpc_error(await call(via, "b"), KillSwitchEngagedError)
        status = await asyncio.to_thread(kill_cli, mesh, 1, "--status")
        assert (status["engaged"], status["reason"]) == (True, "drill")
    finally:
        lifted = await asyncio.to_thread(kill_cli, mesh, 1, "--undo")
    assert lifted == {"engaged": False, "was_engaged": True}
    await within(lambda: everywhere("ok"), "lift")


def audit_records(mesh: Mesh) -> list[dict[str, Any]]:
    folder = mesh.logs / "var" / "audit"
    return [json.loads(line) for path in sorted(folder.glob("audit-*.jsonl"))
            for line in audit_text(path).splitlines()]  # fmt: skip


async def test_every_request_record_names_the_policy_version_that_decided_it(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    shown = await http.get(f"{mesh.brokers[0]}/admin/policy", headers=mesh.admin_headers)
    version = shown.json()["version"]
    allowed = await originate(http, mesh, "alice", "b", plan(new_marker("v")), via=0)
    unauthenticated = await http.post(mesh.jsonrpc_url("b", 0), json={})  # before any policy
    ids = {r.headers["a2a-broker-request-id"] for r in (allowed, unauthenticated)}

    async def all_written() -> bool:  # the decision, the outcome and the refusal
        return len([r for r in audit_records(mesh) if r["request_id"] in ids]) >= 3

    await within(all_written, "audit records")
    records = [r for r in audit_records(mesh) if r["request_id"] in ids]
    assert {r["kind"] for r in records} == {"request", "auth.failure"}
    assert [r["detail"]["policy_version"] for r in records] == [version] * len(records)

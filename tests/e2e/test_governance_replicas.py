"""Operators' controls made on one broker take effect on the other (issue 3).

Two broker processes share one Redis; each reads its own copy of the policy file. A policy
edit to broker 1's copy reaches broker 2 over Redis pub/sub, and a broken edit reaches neither.
Suspending an agent through broker 1, or killing a task tree through broker 2, holds on both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from broker.errors import (
    AgentSuspendedError,
    CallerSuspendedError,
    InvalidAdminRequestError,
    PolicyDeniedError,
    TreeKilledError,
)

from .mesh import Mesh, hop_reply, new_marker, originate, plan, present, seen, start_mesh
from .wire import assert_jsonrpc_error, assert_rest_error

AGENTS = ["b", "c", "d", "e"]
POLICY = "\n".join(
    [
        "g, alice, role:user",
        *(f"g, {name}, role:agent" for name in AGENTS),
        *(f"g2, {name}, group:mesh" for name in AGENTS),
        "p, role:user, *, originate, allow",
        "p, role:user, group:mesh, SendMessage:*, allow",
        "p, role:agent, group:mesh, SendMessage:*, allow",
        "",
    ]
)
DENY_ALICE_TO_E = "p, alice, e, SendMessage:*, deny\n"
PROPAGATION_DEADLINE_S = 5.0
SUSPEND_DEADLINE_S = 1.0
HELD_S = 20.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("governance")
    with start_mesh(folder, redis_url, agents=AGENTS, callers=["alice"], policy=POLICY) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield client


def reason_of(response: httpx.Response) -> str:
    body = response.json()
    if "result" in body:
        return "ok"
    return str(body["error"]["data"][0]["reason"])


async def within(deadline_s: float, check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll ``check`` until it holds; fail after ``deadline_s``. The seconds it took."""
    started = time.monotonic()
    while not await check():
        elapsed = time.monotonic() - started
        assert elapsed < deadline_s, f"{what}: not within {deadline_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def policy_version(http: httpx.AsyncClient, mesh: Mesh, via: int) -> str:
    response = await http.get(f"{mesh.brokers[via]}/admin/policy", headers=mesh.admin_headers)
    return str(response.json()["version"])


async def test_a_policy_edit_on_broker_1_applies_on_broker_2_and_a_broken_one_nowhere(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    async def alice_to_e(via: int) -> str:
        return reason_of(await originate(http, mesh, "alice", "e", plan(new_marker("p")), via=via))

    async def broker_2_says(reason: str) -> bool:
        return await alice_to_e(1) == reason

    assert await alice_to_e(1) == "ok"
    mesh.policy_files[0].write_text(POLICY + DENY_ALICE_TO_E)
    try:
        await within(
            PROPAGATION_DEADLINE_S, lambda: broker_2_says(PolicyDeniedError.reason), "deny"
        )
        assert await alice_to_e(0) == PolicyDeniedError.reason
        versions = [await policy_version(http, mesh, via) for via in (0, 1)]
        assert versions[0] == versions[1]

        # The deny taken out again, but with a broken last line: nothing may change anywhere.
        broken = POLICY + "p, alice, e\n"
        broken_line = len(broken.splitlines())
        mesh.policy_files[0].write_text(broken)
        reload = await http.post(
            f"{mesh.brokers[0]}/admin/policy/reload", headers=mesh.admin_headers
        )
        error = assert_rest_error(reload, InvalidAdminRequestError)
        assert f"{mesh.policy_files[0]}:{broken_line}:" in error["message"]
        assert [await policy_version(http, mesh, via) for via in (0, 1)] == versions
        assert [await alice_to_e(via) for via in (0, 1)] == [PolicyDeniedError.reason] * 2
    finally:
        mesh.policy_files[0].write_text(POLICY)
        await within(PROPAGATION_DEADLINE_S, lambda: broker_2_says("ok"), "restore")


async def test_suspending_through_broker_1_stops_traffic_on_broker_2_within_a_second(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    async def to_d() -> httpx.Response:
        return await originate(http, mesh, "alice", "d", plan(new_marker("to-d")), via=1)

    async def from_d() -> httpx.Response:
        return await originate(http, mesh, "d", "c", plan(new_marker("from-d")), via=1)

    async def both_refused() -> bool:
        refusals = [reason_of(await to_d()), reason_of(await from_d())]
        return refusals == [AgentSuspendedError.reason, CallerSuspendedError.reason]

    assert reason_of(await to_d()) == "ok"
    admin = f"{mesh.brokers[0]}/admin/agents/d"
    suspended = await http.post(f"{admin}/suspend", headers=mesh.admin_headers)
    assert suspended.status_code == 200, suspended.text
    try:
        await within(SUSPEND_DEADLINE_S, both_refused, "suspension on broker 2")
        assert_jsonrpc_error(await to_d(), AgentSuspendedError)
        assert_jsonrpc_error(await from_d(), CallerSuspendedError)
    finally:
        await http.post(f"{admin}/resume", headers=mesh.admin_headers)


async def test_killing_a_tree_through_broker_2_cancels_its_running_task_and_stops_delegation(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("kill")
    # b hands c work and answers at once; c's task runs on until it is cancelled.
    b_reply = await hop_reply(
        http, mesh, "alice", "b", plan(marker, "c", detach=True, hold={"c": HELD_S})
    )
    at_c = b_reply["results"][0]
    assert at_c["state"] in ("TASK_STATE_SUBMITTED", "TASK_STATE_WORKING"), at_c
    ((seen_by_c,), (seen_by_b,)) = [await seen(http, mesh, name, marker) for name in "cb"]
    tree = seen_by_c["claims"]["tree"]

    killed = await http.post(
        f"{mesh.brokers[1]}/admin/trees/{tree}/kill", headers=mesh.admin_headers
    )

    assert killed.status_code == 200, killed.text
    answer: dict[str, Any] = killed.json()
    assert (answer["tree"], answer["killed"], answer["newly_killed"]) == (tree, True, True)
    assert {"agent": "c", "task_id": at_c["task_id"], "result": "cancelled"} in answer["tasks"]
    cancels = (await http.get(f"{mesh.hopper}/_cancels", params={"name": "c"})).json()
    assert [c["task_id"] for c in cancels] == [at_c["task_id"]]
    assert cancels[0]["error"] is None  # the broker's CancelTask carried a token c verified
    after = new_marker("after-kill")
    for via in (0, 1):
        replay = await present(http, mesh, "b", "c", plan(after), token=seen_by_b["token"], via=via)
        assert_jsonrpc_error(replay, TreeKilledError)
    assert await seen(http, mesh, "c", after) == []
    shown = await http.get(f"{mesh.brokers[0]}/admin/trees/{tree}", headers=mesh.admin_headers)
    assert shown.json()["killed"] is True

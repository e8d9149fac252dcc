"""Approval inside a delegation chain: alice -> b -> c, where b -> c needs approval (two
brokers on one Redis, the hopper's a2a-sdk agents). c sees nothing until a person approves;
then it gets b's call once, under a fresh token for the chain alice > b. A killed tree voids
the approvals waiting in it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from broker.errors import ApprovalNotUsableError
from testkit.config import credential_sha256

from .mesh import Mesh, hop_reply, new_marker, plan, seen, start_mesh
from .wire import assert_rest_error

AGENTS = ["b", "c"]
OSCAR = f"oscar-{secrets.token_hex(8)}"
POLICY = "\n".join([
    "g, alice, role:user",
    *(f"g, {name}, role:agent" for name in AGENTS),
    *(f"g2, {name}, group:mesh" for name in AGENTS),
    "p, role:user, *, originate, allow",
    "p, role:user, group:mesh, SendMessage:*, allow",
    "p, role:agent, group:mesh, SendMessage:*, allow",
    "p, b, c, SendMessage:*, approve",
    "",
])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    tables = {
        "approvals": {"ttl_s": 60.0},
        "approvals.approvers.oscar": {"token_sha256": credential_sha256(OSCAR)},
    }
    folder = tmp_path_factory.mktemp("approval-chain")
    with start_mesh(folder, redis_url, agents=AGENTS, callers=["alice"], policy=POLICY,
                    tables=tables) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield client


async def held_at_c(http: httpx.AsyncClient, mesh: Mesh, marker: str) -> dict[str, Any]:
    """alice asks b to call c; b's call is held: its result is the broker's task."""
    reply = await hop_reply(http, mesh, "alice", "b", plan(marker, "c"))
    [result] = reply["results"]
    assert result["ok"] and result["state"] == "TASK_STATE_AUTH_REQUIRED", result
    assert result["task_id"].startswith("approval-")
    assert await seen(http, mesh, "c", marker) == []
    return {"approval": result["task_id"], "tree": reply["claims"]["tree"]}


async def approve(http: httpx.AsyncClient, mesh: Mesh, approval: str) -> httpx.Response:
    return await http.post(
        f"{mesh.brokers[1]}/admin/approvals/{approval}",
        headers={"Authorization": f"Bearer {OSCAR}"},
        json={"decision": "approve", "reason": "checked"},
    )


async def test_c_sees_nothing_until_approved_then_bs_call_once(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("chain")
    held = await held_at_c(http, mesh, marker)
    await asyncio.sleep(1.0)
    assert await seen(http, mesh, "c", marker) == []
    approved = await approve(http, mesh, held["approval"])
    assert approved.status_code == 200, approved.text
    deadline = time.monotonic() + 10
    records: list[dict[str, Any]] = []
    while not records and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        records = await seen(http, mesh, "c", marker)
    [record] = records
    assert record["claims"]["chain"] == ["alice", "b"] and record["claims"]["aud"] == "c"
    assert record["claims"]["tree"] == held["tree"]
    await asyncio.sleep(1.0)
    assert len(await seen(http, mesh, "c", marker)) == 1


async def test_a_killed_tree_voids_its_waiting_approvals(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("killed")
    held = await held_at_c(http, mesh, marker)
    killed = await http.post(f"{mesh.brokers[0]}/admin/trees/{held['tree']}/kill",
                             headers=mesh.admin_headers)
    assert killed.status_code == 200, killed.text
    assert_rest_error(await approve(http, mesh, held["approval"]), ApprovalNotUsableError)
    shown = await http.get(f"{mesh.brokers[0]}/admin/approvals/{held['approval']}",
                           headers=mesh.admin_headers)
    assert shown.json()["state"] == "voided"
    await asyncio.sleep(0.5)
    assert await seen(http, mesh, "c", marker) == []

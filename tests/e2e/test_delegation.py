"""Delegation chains between real a2a-sdk agents through real brokers (issue 3).

The hopper agents (``tests/e2e/hopper.py``) verify every token they receive against the broker's
JWKS, record what they saw, and call on through the broker as the test's plan says. Callers
``alice`` (may originate, may reach every agent) and ``mallory`` (may originate, may only reach
b) are identities without an agent. Two brokers share one Redis; limits are small so the guards
show: depth at most 3, 10 children per task towards ``sink-total``, 4 at once towards
``sink-concurrent``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from broker.delegation.errors import (
    DelegationRequiredError,
    DelegationTokenExpiredError,
    DelegationTokenInvalidError,
    DelegationTokenNotYoursError,
)
from broker.delegation.tokens import TokenMinter, hop_scope
from broker.errors import (
    BrokerError,
    CycleDetectedError,
    FanOutConcurrentExceededError,
    FanOutTotalExceededError,
    HopLimitExceededError,
    PolicyDeniedError,
)
from broker.identity.keys import BrokerKeys, load_signing_key

from .mesh import (
    Mesh,
    hop_reply,
    new_marker,
    plan,
    present,
    reasons,
    refusal,
    seen,
    start_mesh,
    token_for,
)
from .sdk import client_for, send_request
from .wire import A2A_V1, assert_jsonrpc_error, jsonrpc, user_message

AGENTS = ["a", "b", "c", "d", "e", "sink-total", "sink-concurrent"]
MESH = "group:mesh"
POLICY = "\n".join(
    [
        "g, alice, role:user",
        "g, a, role:user",
        "g, mallory, role:guest",
        *(f"g, {name}, role:agent" for name in AGENTS),
        *(f"g2, {name}, {MESH}" for name in AGENTS),
        "p, role:user, *, originate, allow",
        "p, role:guest, *, originate, allow",
        f"p, role:user, {MESH}, SendMessage:*, allow",
        f"p, role:agent, {MESH}, SendMessage:*, allow",
        # mallory may ask b, and nothing else: what b does on mallory's behalf is narrowed to that.
        "p, role:guest, b, SendMessage:*, allow",
        # c holds the agents' allow for e, and this explicit deny.
        "p, c, e, SendMessage:*, deny",
        "",
    ]
)
LIMITS = {
    "delegation.limits": {"max_depth": 3},
    "delegation.agents.sink-total": {"max_children_total": 10},
    "delegation.agents.sink-concurrent": {"max_children_concurrent": 4},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("delegation")
    with start_mesh(
        folder,
        redis_url,
        agents=AGENTS,
        callers=["alice", "mallory"],
        policy=POLICY,
        tables=LIMITS,
    ) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        yield client


def expected(error: type[BrokerError]) -> tuple[int, str]:
    return error.code, error.reason


def first_result(reply: dict[str, Any], *path: int) -> dict[str, Any]:
    """The downstream result ``reply`` reports, following ``path`` replies deeper."""
    result: dict[str, Any] = reply["results"][0]
    for _ in path:
        result = result["reply"]["results"][0]
    return result


# --- a chain, and tokens that must not work --------------------------------------------------


async def test_a_to_b_to_c_gives_c_a_token_whose_chain_is_a_then_b(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("chain")
    async with httpx.AsyncClient(headers=mesh.bearer("alice"), trust_env=False, timeout=30) as sdk:
        client = await client_for(sdk, f"{mesh.brokers[0]}/agents/b", "JSONRPC")
        events = [event async for event in client.send_message(send_request(plan(marker, "c")))]
    task = events[-1].task
    b_reply = json.loads(task.artifacts[0].parts[0].text)

    (at_c,) = await seen(http, mesh, "c", marker)
    assert at_c["error"] is None
    claims = at_c["claims"]
    assert claims["chain"] == ["alice", "b"]
    assert (claims["aud"], claims["sub"], claims["depth"]) == ("c", "alice", 2)
    assert claims["act"] == {"sub": "b", "act": {"sub": "alice"}}
    assert claims["iss"] == mesh.issuer
    assert "a2a:SendMessage" in claims["scope"].split()
    b_claims = b_reply["claims"]
    assert b_claims["chain"] == ["alice"]
    assert (claims["tree"], claims["parent"]) == (b_claims["tree"], b_claims["jti"])
    assert claims["exp"] <= b_claims["exp"]
    assert first_result(b_reply)["state"] == "TASK_STATE_COMPLETED"


def _forge(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(
        json.dumps({**claims, **changes}, separators=(",", ":")).encode()
    ).rstrip(b"=")
    return f"{header}.{forged.decode()}.{signature}"


async def test_a_forged_chain_is_invalid_and_reaches_no_one(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    # mallory's chain, rewritten to look as if alice had started it.
    token = await token_for(http, mesh, "mallory", "b", new_marker("mallory"))
    forged = _forge(token, sub="alice", chain=["alice"], act={"sub": "alice"})
    marker = new_marker("forged")

    response = await present(http, mesh, "b", "c", plan(marker), token=forged)

    assert_jsonrpc_error(response, DelegationTokenInvalidError)
    assert await seen(http, mesh, "c", marker) == []


async def test_a_token_replayed_by_another_agent_is_not_yours(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    token_of_b = await token_for(http, mesh, "alice", "b", new_marker("for-b"))
    marker = new_marker("replayed")

    response = await present(http, mesh, "d", "c", plan(marker), token=token_of_b)

    assert_jsonrpc_error(response, DelegationTokenNotYoursError)
    assert await seen(http, mesh, "c", marker) == []


async def test_an_expired_token_is_refused(mesh: Mesh, http: httpx.AsyncClient) -> None:
    keys = BrokerKeys(load_signing_key(mesh.key_file), jwks_url="")
    an_hour_ago = time.time() - 3600
    minter = TokenMinter(keys, mesh.issuer, 60, clock=lambda: an_hour_ago)
    expired, _ = minter.mint_origin("alice", "b", hop_scope("SendMessage"))
    marker = new_marker("expired")

    for via in (0, 1):
        response = await present(http, mesh, "b", "c", plan(marker), token=expired, via=via)
        assert_jsonrpc_error(response, DelegationTokenExpiredError)
    assert await seen(http, mesh, "c", marker) == []


async def test_a_token_for_b_shown_to_c_directly_fails_cs_audience_check(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    token_of_b = await token_for(http, mesh, "alice", "b", new_marker("for-b"))
    marker = new_marker("direct")

    response = await jsonrpc(
        http,
        f"{mesh.hopper}/c/a2a/jsonrpc",
        "SendMessage",
        {"message": user_message(plan(marker))},
        headers={**A2A_V1, "A2A-Delegation": token_of_b},
    )

    assert response.json()["result"]["task"]["status"]["state"] == "TASK_STATE_REJECTED"
    (at_c,) = await seen(http, mesh, "c", marker)
    assert (at_c["claims"], at_c["error"]) == (None, "BrokerTokenAudienceError")


# --- cycles and depth -------------------------------------------------------------------------


async def test_a_to_b_to_a_is_a_cycle(mesh: Mesh, http: httpx.AsyncClient) -> None:
    marker = new_marker("cycle")

    b_reply = await hop_reply(http, mesh, "a", "b", plan(marker, "a"))

    assert refusal(first_result(b_reply)) == expected(CycleDetectedError)
    assert await seen(http, mesh, "a", marker) == []


async def test_a_to_b_to_c_to_b_is_a_cycle(mesh: Mesh, http: httpx.AsyncClient) -> None:
    marker = new_marker("cycle")

    b_reply = await hop_reply(http, mesh, "alice", "b", plan(marker, "c", "b"))

    assert refusal(first_result(b_reply, 0)) == expected(CycleDetectedError)
    assert len(await seen(http, mesh, "b", marker)) == 1


async def test_depth_three_is_allowed_and_depth_four_is_not(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    deep_enough, too_deep = new_marker("depth3"), new_marker("depth4")

    ok = await hop_reply(http, mesh, "alice", "b", plan(deep_enough, "c", "d"))
    refused = await hop_reply(http, mesh, "alice", "b", plan(too_deep, "c", "d", "e"))

    (at_d,) = await seen(http, mesh, "d", deep_enough)
    assert (at_d["claims"]["depth"], at_d["claims"]["chain"]) == (3, ["alice", "b", "c"])
    assert first_result(ok, 0)["state"] == "TASK_STATE_COMPLETED"
    assert refusal(first_result(refused, 0, 0)) == expected(HopLimitExceededError)
    assert len(await seen(http, mesh, "d", too_deep)) == 1
    assert await seen(http, mesh, "e", too_deep) == []


# --- fan-out, across both brokers --------------------------------------------------------------


async def test_fan_out_total_stops_exactly_at_the_limit_across_brokers(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("fan-total")

    b_reply = await hop_reply(
        http, mesh, "alice", "b", plan(marker, "sink-total", fanout=30, via="alternate")
    )

    assert reasons(b_reply["results"]) == ["FAN_OUT_TOTAL_EXCEEDED"] * 20 + ["ok"] * 10
    refused = [r for r in b_reply["results"] if not r["ok"]]
    assert {refusal(r) for r in refused} == {expected(FanOutTotalExceededError)}
    assert len(await seen(http, mesh, "sink-total", marker)) == 10


async def test_fan_out_concurrency_stops_exactly_at_the_limit_across_brokers(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("fan-concurrent")
    held = {"sink-concurrent": 1.0}

    b_reply = await hop_reply(
        http,
        mesh,
        "alice",
        "b",
        plan(marker, "sink-concurrent", fanout=12, via="alternate", hold=held),
    )

    assert reasons(b_reply["results"]) == ["FAN_OUT_CONCURRENT_EXCEEDED"] * 8 + ["ok"] * 4
    refused = [r for r in b_reply["results"] if not r["ok"]]
    assert {refusal(r) for r in refused} == {expected(FanOutConcurrentExceededError)}
    assert len(await seen(http, mesh, "sink-concurrent", marker)) == 4


# --- policy on the whole chain -----------------------------------------------------------------


async def test_an_agent_that_may_not_originate_needs_a_delegation(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("no-context")

    response = await jsonrpc(
        http,
        mesh.jsonrpc_url("c"),
        "SendMessage",
        {"message": user_message(plan(marker))},
        headers=mesh.bearer("b"),
    )

    assert_jsonrpc_error(response, DelegationRequiredError)
    assert await seen(http, mesh, "c", marker) == []


async def test_an_agent_calling_itself_without_a_delegation_needs_one(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    """Without a token there is no chain to loop through: the missing context is the refusal."""
    marker = new_marker("self-no-context")

    response = await jsonrpc(
        http,
        mesh.jsonrpc_url("b"),
        "SendMessage",
        {"message": user_message(plan(marker))},
        headers=mesh.bearer("b"),
    )

    assert_jsonrpc_error(response, DelegationRequiredError)
    assert await seen(http, mesh, "b", marker) == []


async def test_authority_narrows_b_may_not_do_for_mallory_what_mallory_may_not(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("narrow")

    b_reply = await hop_reply(http, mesh, "mallory", "b", plan(marker, "c"))

    assert b_reply["claims"]["chain"] == ["mallory"]
    assert refusal(first_result(b_reply)) == expected(PolicyDeniedError)
    assert await seen(http, mesh, "c", marker) == []


async def test_an_explicit_deny_beats_the_allow_c_also_holds(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    allowed, denied = new_marker("b-to-e"), new_marker("c-to-e")

    ok = await hop_reply(http, mesh, "alice", "b", plan(allowed, "e"))
    refused = await hop_reply(http, mesh, "alice", "b", plan(denied, "c", "e"))

    assert first_result(ok)["state"] == "TASK_STATE_COMPLETED"
    assert refusal(first_result(refused, 0)) == expected(PolicyDeniedError)
    assert await seen(http, mesh, "e", denied) == []

"""ListTasks page tokens (broker.protocols.a2a.task_pages): sealed, bound to caller and agent,
expiring."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InvalidPageTokenError
from broker.identity.keys import BrokerKeys
from broker.protocols.a2a.task_pages import (
    PAGE_TOKEN_TTL_S,
    Page,
    PageTokens,
    callers_page,
    jsonrpc_body_for_agent,
    query_for_agent,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


KEYS = BrokerKeys(Ed25519PrivateKey.generate())


@given(st.text(max_size=200), st.integers(0, 10**6))
def test_a_sealed_page_opens_for_its_caller_and_agent_only(agent_token: str, seen: int) -> None:
    tokens = PageTokens(KEYS)
    token = tokens.seal("bob", "echo", Page(agent_token, seen))

    assert tokens.open("bob", "echo", token) == Page(agent_token, seen)
    if len(agent_token) >= 8:  # shorter ones may turn up in random ciphertext by chance
        assert agent_token.encode() not in base64.urlsafe_b64decode(token + "==")
    for caller, agent in (("alice", "echo"), ("bob", "other"), ("bo", "b\necho")):
        with pytest.raises(InvalidPageTokenError):
            tokens.open(caller, agent, token)


def test_a_token_of_another_key_a_tampered_one_or_an_old_one_does_not_open() -> None:
    clock = Clock()
    tokens = PageTokens(KEYS, clock)
    token = tokens.seal("bob", "echo", Page("agent-token", 3))
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (flipped, "", "x", token + "x", "a" * 5000):
        with pytest.raises(InvalidPageTokenError):
            tokens.open("bob", "echo", bad)
    with pytest.raises(InvalidPageTokenError):
        PageTokens(BrokerKeys(Ed25519PrivateKey.generate())).open("bob", "echo", token)
    clock.now += PAGE_TOKEN_TTL_S + 1
    with pytest.raises(InvalidPageTokenError):
        tokens.open("bob", "echo", token)


async def test_a_page_keeps_the_callers_tasks_and_counts_them() -> None:
    mine = {"t1", "t3"}

    async def owned(task_id: str) -> bool:
        return task_id in mine

    result: dict[str, Any] = {
        "tasks": [{"id": "t1"}, {"id": "t2"}, {"id": "t3"}, {"x": 1}, "junk"],
        "nextPageToken": "agent-next",
        "pageSize": 5,
        "totalSize": 99,
    }
    sealed: list[Page] = []

    def seal(page: Page) -> str:
        sealed.append(page)
        return "broker-next"

    page = await callers_page(result, Page("agent-now", 4), owned, seal)

    assert page["tasks"] == [{"id": "t1"}, {"id": "t3"}]
    assert page["totalSize"] == 6 and page["nextPageToken"] == "broker-next"
    assert sealed == [Page("agent-next", 6)]
    last = await callers_page({"tasks": [], "nextPageToken": ""}, None, owned, seal)
    assert last["nextPageToken"] == "" and last["totalSize"] == 0


def test_the_agent_is_asked_with_its_own_token_only() -> None:
    import msgspec

    body = jsonrpc_body_for_agent(
        msgspec.Raw(b'"r1"'), b'{"page_token":"mine","pageSize":2}', "agent-token"
    )
    assert msgspec.json.decode(body) == {
        "jsonrpc": "2.0",
        "id": "r1",
        "method": "ListTasks",
        "params": {"pageSize": 2, "pageToken": "agent-token"},
    }
    query = query_for_agent("pageSize=2&pageToken=mine&contextId=c+1", "a/b")
    assert query == "pageSize=2&contextId=c+1&pageToken=a%2Fb"

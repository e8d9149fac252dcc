"""A task that had ended when its answer passed is kept for finished_task_ttl_s, outside its tree;
a running one for task_route_ttl_s, in its tree (real Redis, the answer as an agent sends it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
import redis

from broker.delegation.tokens import Actor, DelegationClaims
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.protocols.a2a.task_pages import PageTokens
from broker.settings import StoreSettings
from broker.stages.responses import ResponseInspector
from broker.stores.base import AgentRecord, Stores
from broker.stores.factory import open_backend
from broker.types import MediationContext
from testkit.redis_process import RedisMode

RUNNING_TTL_S, FINISHED_TTL_S = 7 * 24 * 3600, 3600


@pytest.fixture
async def redis_stores(
    redis_store_settings: Callable[[RedisMode], StoreSettings],
) -> AsyncIterator[tuple[Stores, StoreSettings]]:
    settings = redis_store_settings("standalone")
    backend = open_backend(settings)
    try:
        yield backend.stores(), settings
    finally:
        await backend.close()


def _ctx(task_tree: str) -> MediationContext:
    async def no_body() -> bytes:
        return b""

    ctx = MediationContext(binding="jsonrpc", target_name="echo", http_method="POST",
                           headers={}, read_body=no_body)  # fmt: skip
    ctx.operation = SEND_MESSAGE
    ctx.caller = "planner"
    ctx.target = AgentRecord(name="echo", card_json="{}")
    ctx.hop = DelegationClaims(
        iss="http://broker", aud="echo", sub="planner", act=Actor(sub="planner"),
        chain=("planner",), tree=task_tree, depth=1, scope="a2a:SendMessage", jti="j1",
        iat=0, exp=2**31, dl=2.0**31,
    )  # fmt: skip
    return ctx


def _answer(task_id: str, state: str) -> bytes:
    task = {"id": task_id, "contextId": "c", "status": {"state": state}}
    return msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "result": {"task": task}})


@pytest.mark.parametrize(
    ("state", "ttl", "in_tree"),
    [
        ("TASK_STATE_COMPLETED", FINISHED_TTL_S, False),
        ("TASK_STATE_FAILED", FINISHED_TTL_S, False),
        ("canceled", FINISHED_TTL_S, False),  # A2A 0.3's name
        ("TASK_STATE_WORKING", RUNNING_TTL_S, True),
        ("TASK_STATE_INPUT_REQUIRED", RUNNING_TTL_S, True),
    ],
)
async def test_the_route_lives_as_long_as_the_task_can_still_be_needed(
    state: str, ttl: int, in_tree: bool, redis_stores: tuple[Stores, StoreSettings]
) -> None:
    stores, settings = redis_stores
    pages = PageTokens.__new__(PageTokens)  # not used by SendMessage
    inspector = ResponseInspector(stores.task_routes, RUNNING_TTL_S, lambda card, _: card,
                                  pages, finished_ttl_s=FINISHED_TTL_S)  # fmt: skip
    body = _answer("t1", state)
    assert await inspector.unary(_ctx("tree-1"), 200, "application/json", body) == body
    route = await stores.task_routes.get("echo", "t1")
    assert route is not None and route.owner == "planner"
    client = redis.Redis.from_url(settings.redis_url)
    try:
        remaining = client.ttl(f"{settings.key_prefix}:route:{{4:echo:t1}}")
    finally:
        client.close()
    assert ttl - 5 <= remaining <= ttl
    assert (await stores.task_trees.members("tree-1") == [("echo", "t1")]) is in_tree

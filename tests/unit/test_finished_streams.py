"""A task first seen running (a stream, a non-blocking send) is kept as a finished task once it
is seen ending: in the stream that ends it, a resubscription's stream, or a polled GetTask. Its
route then expires ``finished_task_ttl_s`` later and it leaves its tree, on both backends (real
Redis). A task never seen ending keeps the running task's TTL and its tree entry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from stage_kit import KEYS, Next, ctx

from broker.delegation.tokens import Actor, DelegationClaims
from broker.outbound.fake import FakeResponse, FakeTransport, answering
from broker.protocols.a2a.operations import (
    GET_TASK,
    SEND_MESSAGE,
    SEND_STREAMING_MESSAGE,
    SUBSCRIBE_TO_TASK,
    Operation,
)
from broker.protocols.a2a.task_pages import PageTokens
from broker.settings import LimitSettings, StoreSettings
from broker.stages.forward import Forward
from broker.stages.responses import ResponseInspector
from broker.stores.base import Stores
from broker.stores.factory import open_backend
from broker.types import MediationContext, Reply, StreamReply
from testkit.redis_process import RedisMode

RUNNING_TTL_S, FINISHED_TTL_S = 600, 1
TREE = "tree-1"
SSE = {"content-type": "text/event-stream"}


@pytest.fixture(params=["memory", "redis"])
async def stores(
    request: pytest.FixtureRequest, redis_store_settings: Callable[[RedisMode], StoreSettings]
) -> AsyncIterator[Stores]:
    settings = StoreSettings() if request.param == "memory" else redis_store_settings("standalone")
    backend = open_backend(settings)
    try:
        yield backend.stores()
    finally:
        await backend.close()


def _forward(stores: Stores, answer: FakeResponse) -> Forward:
    inspector = ResponseInspector(
        stores.task_routes, RUNNING_TTL_S, lambda card, _: card, PageTokens(KEYS),
        finished_ttl_s=FINISHED_TTL_S, trees=stores.task_trees,
    )  # fmt: skip
    return Forward(FakeTransport(answering(answer)), LimitSettings(), {}, inspector)


def _ctx(operation: Operation) -> MediationContext:
    made = ctx(operation=operation)
    made.body, made.jsonrpc_id = b"{}", msgspec.Raw(b"1")
    made.hop = DelegationClaims(
        iss="http://broker", aud="b", sub="a", act=Actor(sub="a"), chain=("a",), tree=TREE,
        depth=1, scope="a2a:SendMessage", jti="j1", iat=0, exp=2**31, dl=2.0**31,
    )  # fmt: skip
    return made


def _task(state: str) -> dict[str, object]:
    return {"id": "t1", "contextId": "c", "status": {"state": state}}


def _event(member: str, value: dict[str, object]) -> bytes:
    body = {"jsonrpc": "2.0", "id": 1, "result": {member: value}}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def _update(state: str) -> bytes:
    return _event("statusUpdate", {"taskId": "t1", "contextId": "c", "status": {"state": state}})


async def _stream(stores: Stores, operation: Operation, events: list[bytes]) -> None:
    answer = FakeResponse(200, headers=SSE, chunks_=events)
    outcome = await _forward(stores, answer)(_ctx(operation), Next())
    assert isinstance(outcome, StreamReply)
    assert len([event async for event in outcome.events]) == len(events)


async def _unary(stores: Stores, operation: Operation, result: dict[str, object]) -> None:
    body = msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "result": result})
    outcome = await _forward(stores, FakeResponse(200, body))(_ctx(operation), Next())
    assert isinstance(outcome, Reply) and outcome.status == 200


async def _alive_after_the_finished_ttl(stores: Stores) -> tuple[bool, bool]:
    """(route still there, still in its tree) once the finished TTL has passed."""
    in_tree = await stores.task_trees.members(TREE) == [("b", "t1")]
    await asyncio.sleep(FINISHED_TTL_S + 0.5)
    return await stores.task_routes.get("b", "t1") is not None, in_tree


async def test_a_stream_that_ends_its_task_leaves_a_finished_route(stores: Stores) -> None:
    events = [_event("task", _task("TASK_STATE_SUBMITTED")), _update("TASK_STATE_WORKING"),
              _update("TASK_STATE_COMPLETED")]  # fmt: skip
    await _stream(stores, SEND_STREAMING_MESSAGE, events)
    assert await stores.task_routes.get("b", "t1") is not None  # fetchable right after it ended
    assert await _alive_after_the_finished_ttl(stores) == (False, False)


async def test_a_stream_whose_first_event_is_the_finished_task(stores: Stores) -> None:
    await _stream(stores, SEND_STREAMING_MESSAGE, [_event("task", _task("TASK_STATE_FAILED"))])
    assert await _alive_after_the_finished_ttl(stores) == (False, False)


async def test_a_stream_cut_before_its_task_ends_keeps_the_running_route(stores: Stores) -> None:
    events = [_event("task", _task("TASK_STATE_SUBMITTED")), _update("TASK_STATE_WORKING")]
    await _stream(stores, SEND_STREAMING_MESSAGE, events)
    assert await _alive_after_the_finished_ttl(stores) == (True, True)


async def test_a_resubscription_that_sees_the_end_leaves_a_finished_route(stores: Stores) -> None:
    await _stream(stores, SEND_STREAMING_MESSAGE, [_event("task", _task("TASK_STATE_WORKING"))])
    await _stream(stores, SUBSCRIBE_TO_TASK, [_update("canceled")])  # A2A 0.3's name
    assert await _alive_after_the_finished_ttl(stores) == (False, False)


async def test_a_non_blocking_send_polled_to_its_end_leaves_a_finished_route(
    stores: Stores,
) -> None:
    await _unary(stores, SEND_MESSAGE, {"task": _task("TASK_STATE_SUBMITTED")})
    await _unary(stores, GET_TASK, _task("TASK_STATE_WORKING"))
    assert await stores.task_trees.members(TREE) == [("b", "t1")]
    await _unary(stores, GET_TASK, _task("TASK_STATE_COMPLETED"))
    assert await _alive_after_the_finished_ttl(stores) == (False, False)


async def test_a_polled_task_still_running_keeps_its_route(stores: Stores) -> None:
    await _unary(stores, SEND_MESSAGE, {"task": _task("TASK_STATE_SUBMITTED")})
    await _unary(stores, GET_TASK, _task("TASK_STATE_INPUT_REQUIRED"))
    assert await _alive_after_the_finished_ttl(stores) == (True, True)

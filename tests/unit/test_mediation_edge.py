"""The raw ASGI edge (``broker.http.mediation.MediationEdges``): a unary answer in two ASGI
messages, and what escapes a pipeline answered in the binding's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from broker.errors import BrokerError, TaskNotFoundError
from broker.http.mediation import MediationEdges
from broker.types import MediationContext, Outcome, Reply, StreamReply


class Runtime:
    def __init__(self, answer: Outcome | BaseException) -> None:
        self.answer = answer

    async def mediate(self, ctx: MediationContext) -> Outcome:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


async def _litestar(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a mediation path must not reach Litestar")


async def _serve(
    answer: Outcome | BaseException, sent: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    app: Any = _litestar
    app.state = SimpleNamespace(runtime=Runtime(answer))
    edge = MediationEdges(app, 4096)
    scope = {"type": "http", "method": "POST", "path": "/agents/b/jsonrpc", "headers": [],
             "query_string": b""}  # fmt: skip
    sent = [] if sent is None else sent
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        if received:  # the caller stays: later reads wait
            await asyncio.Event().wait()
        received.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await edge(scope, receive, send)
    return sent


async def test_a_unary_answer_is_a_start_and_one_body() -> None:
    sent = await _serve(Reply(201, b'{"ok": 1}', headers={"X-Id": "r1"}))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 201
    assert sent[0]["headers"] == [
        (b"x-id", b"r1"), (b"content-type", b"application/json"), (b"content-length", b"9"),
    ]  # fmt: skip
    assert (sent[1]["body"], sent[1]["more_body"]) == (b'{"ok": 1}', False)


@pytest.mark.parametrize(
    ("escaped", "code"), [(TaskNotFoundError(), -32001), (RuntimeError("boom"), -32603)]
)
async def test_what_escapes_the_pipeline_is_answered_in_the_binding_s_shape(
    escaped: Exception, code: int
) -> None:
    sent = await _serve(escaped)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    answer = json.loads(sent[1]["body"])
    assert answer["error"]["code"] == code and "boom" not in sent[1]["body"].decode()


async def test_a_stream_that_fails_after_it_started_is_not_answered_twice() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: {}\r\n\r\n"
        raise TaskNotFoundError

    sent: list[dict[str, Any]] = []
    with pytest.raises(BaseExceptionGroup) as raised:  # Litestar's stream runs in a task group
        await _serve(StreamReply(events()), sent)
    assert raised.group_contains(BrokerError)
    assert [m["type"] for m in sent].count("http.response.start") == 1

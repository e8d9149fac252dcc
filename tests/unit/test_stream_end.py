"""A stream that fails after it started ends with one error event and a clean end, never cut."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from broker.audit_runtime import AuditRecorder
from broker.errors import StoreUnavailableError, UpstreamBadResponseError
from broker.operations import SEND_STREAMING_MESSAGE
from broker.stages.boundary import ErrorBoundary
from broker.types import Binding, MediationContext, Outcome, StreamReply
from broker.wire import sse_error_event

EVENT = b'data: {"jsonrpc":"2.0","id":1,"result":{}}\r\n\r\n'


async def _body() -> bytes:
    return b"{}"


def _ctx(binding: Binding) -> MediationContext:
    ctx = MediationContext(binding, "b", "POST", headers={}, read_body=_body, caller="a")
    ctx.operation = SEND_STREAMING_MESSAGE
    ctx.jsonrpc_id = msgspec.Raw(b"1")
    return ctx


async def _relayed(ctx: MediationContext, events: AsyncIterator[bytes]) -> list[bytes]:
    async def pipeline(_: MediationContext) -> Outcome:
        return StreamReply(events)

    outcome = await ErrorBoundary(AuditRecorder(None))(ctx, pipeline)
    assert isinstance(outcome, StreamReply)
    return [event async for event in outcome.events]


def _error_reason(frame: bytes, binding: Binding) -> str:
    assert frame.startswith(b"event: error\r\ndata: ") and frame.endswith(b"\r\n\r\n")
    body = msgspec.json.decode(frame.split(b"data: ", 1)[1])
    details = body["error"]["data"] if binding == "jsonrpc" else body["error"]["details"]
    return str(details[0]["reason"])


@pytest.mark.parametrize("binding", ["jsonrpc", "rest"])
async def test_a_failure_after_the_first_event_ends_the_stream_with_one_error_event(
    binding: Binding,
) -> None:
    async def events() -> AsyncIterator[bytes]:
        yield EVENT
        raise StoreUnavailableError(detail="ConnectionError: refused")

    ctx = _ctx(binding)
    relayed = await _relayed(ctx, events())
    assert relayed[0] == EVENT and len(relayed) == 2
    assert _error_reason(relayed[1], binding) == "STORE_UNAVAILABLE"
    assert b"refused" not in relayed[1]  # the detail stays in the log


async def test_an_unexpected_error_becomes_internal_error_without_its_text() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield EVENT
        raise RuntimeError("secret internals")

    relayed = await _relayed(_ctx("jsonrpc"), events())
    assert _error_reason(relayed[-1], "jsonrpc") == "INTERNAL_ERROR"
    assert b"secret" not in b"".join(relayed)


async def test_no_second_error_event_when_the_stream_sent_its_own() -> None:
    ctx = _ctx("rest")
    err = UpstreamBadResponseError()

    async def events() -> AsyncIterator[bytes]:
        yield EVENT
        ctx.error = err  # as the relay does when it ends a stream with an error event
        yield sse_error_event(err, "rest", None)
        raise StoreUnavailableError  # e.g. something failing while the stream is closed

    relayed = await _relayed(ctx, events())
    assert [_error_reason(e, "rest") for e in relayed[1:]] == ["UPSTREAM_BAD_RESPONSE"]

"""Forward, the innermost A2A stage, against the fake transport: what reaches the agent, and
how its answers and failures come back."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from stage_kit import KEYS, MINTER, Next, ctx

from broker.errors import (
    UpstreamBadResponseError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from broker.outbound.fake import FakeRequest, FakeResponse, FakeTransport, answering
from broker.pipeline.stage import fold
from broker.protocols.a2a.task_pages import PageTokens
from broker.settings import LimitSettings, UpstreamCredential
from broker.stages.forward import Forward
from broker.stages.responses import ResponseInspector
from broker.stores.memory import MemoryBackend
from broker.types import MediationContext, Reply, StreamReply

BODY = b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}}'
ANSWER = b'{"jsonrpc": "2.0", "id": 1, "result": {"message": {"role": "agent"}}}'


def _forward(
    transport: FakeTransport,
    creds: dict[str, UpstreamCredential] | None = None,
    limits: LimitSettings | None = None,
) -> Forward:
    stores = MemoryBackend().stores()
    inspector = ResponseInspector(stores.task_routes, 60, lambda card, _: card, PageTokens(KEYS))
    return Forward(transport, limits or LimitSettings(), creds or {}, inspector)


def _sending() -> MediationContext:
    made = ctx(headers={"content-type": "application/json", "authorization": "Bearer caller-secret",
                        "a2a-version": "1.0", "cookie": "x=1"})  # fmt: skip
    made.body, made.jsonrpc_id, made.hop_token = BODY, msgspec.Raw(b"1"), "hop-token"
    return made


async def test_the_agent_gets_the_caller_s_bytes_and_the_hop_token_never_its_credential() -> None:
    transport = FakeTransport(answering(FakeResponse(200, ANSWER)))
    outcome = await _forward(transport)(_sending(), Next())
    assert isinstance(outcome, Reply) and outcome.status == 200
    sent = transport.sent[0]
    assert (sent.method, sent.url, sent.body) == ("POST", "http://127.0.0.1:9/rpc", BODY)
    assert sent.headers["authorization"] == "Bearer hop-token"
    assert sent.headers["a2a-delegation"] == "hop-token"
    assert "cookie" not in sent.headers and "caller-secret" not in str(sent.headers)


async def test_a_broker_held_credential_replaces_the_token_in_authorization() -> None:
    transport = FakeTransport(answering(FakeResponse(200, ANSWER)))
    creds = {"b": UpstreamCredential(kind="bearer", value="agent-key")}
    await _forward(transport, creds)(_sending(), Next())
    assert transport.sent[0].headers["authorization"] == "Bearer agent-key"
    assert transport.sent[0].headers["a2a-delegation"] == "hop-token"


async def test_an_answer_that_is_not_a2a_is_a_bad_response() -> None:
    transport = FakeTransport(answering(FakeResponse(200, b"<html>oops</html>")))
    with pytest.raises(UpstreamBadResponseError):
        await _forward(transport)(_sending(), Next())


async def test_a_transport_failure_is_the_stage_s_refusal() -> None:
    async def unreachable(_: FakeRequest) -> FakeResponse:
        raise UpstreamUnreachableError(detail="ConnectionRefusedError")

    with pytest.raises(UpstreamUnreachableError):
        await _forward(FakeTransport(unreachable))(_sending(), Next())


async def test_forward_never_calls_the_rest_of_the_chain() -> None:
    """The innermost stage answers itself; folding it last needs no terminal."""
    transport = FakeTransport(answering(FakeResponse(200, ANSWER)))
    outcome = await fold([_forward(transport)])(_sending())
    assert not isinstance(outcome, StreamReply) and outcome.status == 200


async def _hanging(_: FakeRequest) -> FakeResponse:
    await asyncio.sleep(30)
    raise AssertionError("the hop's deadline should have ended the exchange")


@pytest.mark.parametrize("upstream_timeout_s", [120.0, 0.2])
async def test_a_hop_deadline_nearer_than_the_upstream_timeout_ends_the_exchange(
    upstream_timeout_s: float,
) -> None:
    """The hop's deadline bounds the exchange whenever it is the nearer bound; a deadline
    beyond ``upstream_timeout_s`` is left to the transport's own timer (no second one)."""
    sending = _sending()
    sending.hop_token, sending.hop = MINTER.mint_origin("a", "b", "SendMessage", 0.05)
    limits = LimitSettings(upstream_timeout_s=upstream_timeout_s)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError):
        await _forward(FakeTransport(_hanging), limits=limits)(sending, Next())
    assert time.monotonic() - started < 5


async def test_a_hop_deadline_beyond_the_upstream_timeout_leaves_the_answer_alone() -> None:
    sending = _sending()
    sending.hop_token, sending.hop = MINTER.mint_origin("a", "b", "SendMessage", 300)
    transport = FakeTransport(answering(FakeResponse(200, ANSWER)))
    limits = LimitSettings(upstream_timeout_s=10)
    outcome = await _forward(transport, limits=limits)(sending, Next())
    assert isinstance(outcome, Reply) and (outcome.status, outcome.body) == (200, ANSWER)

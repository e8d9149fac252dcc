"""The data-controls stages over fake ``call_next``s: what the target receives, what the caller
gets back, the tags minted into the hop token, and the refusals (docs/datacontrols.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from stage_kit import MINTER, Next, ctx, stream_of

from broker.datacontrols import DataControls, DataControlsSettings, DataRule, FlowRule
from broker.errors import DataBlockedError, DataFlowDeniedError
from broker.llm.context import LlmContext
from broker.llm.datacontrols import LlmDataView
from broker.protocols.a2a.operations import SEND_STREAMING_MESSAGE
from broker.protocols.llm.request import parse_request
from broker.stages.datacontrols import ScanAnswer, ScanRequest
from broker.stages.datacontrols_a2a import A2aDataView
from broker.stages.mint import MintHopToken
from broker.types import MediationContext, Outcome, Reply, StreamReply

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
AWS = "AKIAIOSFODNN7EXAMPLE"


def controls(*rules: DataRule, flows: tuple[FlowRule, ...] = ()) -> DataControls:
    return DataControls(DataControlsSettings(enabled=True, rules=rules, flows=flows))


def a2a_ctx(text: str, **kwargs: Any) -> MediationContext:
    made = ctx(**kwargs)
    params = {"message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": text}]}}
    made.body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": params}
    ).encode()
    return made


def sent_text(seen: MediationContext) -> str:
    return str(json.loads(seen.body)["params"]["message"]["parts"][0]["text"])


def a2a_stages(data: DataControls) -> tuple[ScanRequest[MediationContext], ScanAnswer[Any]]:
    return ScanRequest(data, A2aDataView()), ScanAnswer(data, A2aDataView())


async def test_a_redacted_card_never_reaches_the_target_and_is_counted() -> None:
    request, _ = a2a_stages(controls(DataRule(actions={"pii:card": "redact"})))
    call = a2a_ctx(f"charge {CARD} please")
    after = Next()

    await request(call, after)

    assert sent_text(after.seen[0]) == "charge <CARD_1> please"
    assert CARD not in after.seen[0].body.decode()
    assert call.data_found == {"request": {"pii:card": (1, "redact")}}
    assert call.data_tags == ()  # a redacted value did not go on: nothing to tag


async def test_tags_found_on_a_hop_join_the_parents_in_the_minted_token() -> None:
    request, _ = a2a_stages(controls())  # default action: tag
    _, parent = MINTER.mint_origin("x", "a", "a2a:SendMessage", tags=["secret:aws_key"])
    call = a2a_ctx(f"write to {EMAIL}")
    call.parent, call.chain = parent, ("x", "a")
    after = Next()

    await request(call, lambda c: MintHopToken(MINTER, 60)(c, after))

    assert sent_text(after.seen[0]) == f"write to {EMAIL}"  # tag lets the value through
    hop = after.seen[0].hop
    assert hop is not None and hop.tags == ("pii:email", "secret:aws_key")


async def test_work_carrying_a_forbidden_tag_is_refused_before_anything_is_read() -> None:
    flows = (FlowRule(tags=("secret:*",), agents=("b",)),)
    request, _ = a2a_stages(controls(flows=flows))
    _, parent = MINTER.mint_origin("x", "a", "a2a:SendMessage", tags=["secret:aws_key"])
    call = a2a_ctx("nothing sensitive here")
    call.parent = parent
    after = Next()

    with pytest.raises(DataFlowDeniedError) as refused:
        await request(call, after)

    assert not after.called
    assert refused.value.metadata == {"tag": "secret:aws_key", "target": "b"}


async def test_a_tag_found_on_this_hop_is_judged_before_the_hop_leaves() -> None:
    request, _ = a2a_stages(controls(flows=(FlowRule(tags=("pii:*",), agents=("b",)),)))
    after = Next()

    with pytest.raises(DataFlowDeniedError):
        await request(a2a_ctx(f"mail {EMAIL}"), after)

    assert not after.called


async def test_a_blocked_value_is_refused_and_the_audit_keeps_only_a_digest() -> None:
    request, _ = a2a_stages(controls(DataRule(actions={"secret:*": "block"})))
    call = a2a_ctx(f"key {AWS}")

    with pytest.raises(DataBlockedError) as refused:
        await request(call, Next())

    assert refused.value.metadata["types"] == "secret:aws_key"
    assert call.body == b"" and call.body_digest.startswith("sha256:")
    assert call.data_found == {"request": {"secret:aws_key": (1, "block")}}  # counted too


async def test_a_unary_answer_is_redacted_before_the_caller_gets_it() -> None:
    _, answer = a2a_stages(controls(DataRule(direction="response", actions={"*": "redact"})))
    task = {"id": "t", "artifacts": [{"artifactId": "x", "parts": [{"text": f"key {AWS}"}]}]}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"task": task}}).encode()

    reply = await answer(a2a_ctx("hi"), Next(Reply(200, body)))

    assert isinstance(reply, Reply)
    text = json.loads(reply.body)["result"]["task"]["artifacts"][0]["parts"][0]["text"]
    assert text == "key <AWS_KEY_1>"


def _piece(text: str, *, append: bool, last: bool = False) -> bytes:
    update = {
        "taskId": "t",
        "artifact": {"artifactId": "x", "parts": [{"text": text}]},
        "append": append,
        "lastChunk": last,
    }
    body = {"jsonrpc": "2.0", "id": 1, "result": {"artifactUpdate": update}}
    return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"


def _status(state: str) -> bytes:
    body = {"jsonrpc": "2.0", "id": 1, "result": {"statusUpdate": {"status": {"state": state}}}}
    return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"


async def _read(outcome: Outcome) -> list[bytes]:
    assert isinstance(outcome, StreamReply)
    return [event async for event in outcome.events]


def _texts(events: list[bytes]) -> str:
    out = ""
    for event in events:
        if event.startswith(b"data: "):
            result = json.loads(event[6:])["result"]
            if "artifactUpdate" in result:
                out += result["artifactUpdate"]["artifact"]["parts"][0]["text"]
    return out


async def test_a_card_split_across_stream_events_is_redacted() -> None:
    _, answer = a2a_stages(controls(DataRule(direction="response", actions={"*": "redact"})))
    events = [
        _piece("pay with 4111 11", append=False),
        _piece("11 1111 ", append=True),
        _piece("1111 today", append=True),
        _status("TASK_STATE_COMPLETED"),
    ]
    call = a2a_ctx("hi", operation=SEND_STREAMING_MESSAGE)

    out = await _read(await answer(call, Next(stream_of(*events))))

    assert _texts(out) == "pay with <CARD_1> today"
    assert all(b"1111" not in event for event in out)
    assert b"TASK_STATE_COMPLETED" in out[-1]  # held text went out before the last status
    assert call.data_found == {"response": {"pii:card": (1, "redact")}}


async def test_a_blocked_type_ends_the_stream_before_any_of_it_leaves() -> None:
    _, answer = a2a_stages(controls(DataRule(direction="response", actions={"*": "block"})))
    events = [_piece("the key is AKIAIOSF", append=False), _piece("ODNN7EXAMPLE.", append=True)]
    call = a2a_ctx("hi", operation=SEND_STREAMING_MESSAGE)

    out = await _read(await answer(call, Next(stream_of(*events))))

    assert out[-1].startswith(b"event: error") and b"DATA_RESPONSE_BLOCKED" in out[-1]
    assert not any(b"AKIA" in event for event in out)
    assert call.error is not None and call.error.reason == "DATA_RESPONSE_BLOCKED"
    assert call.data_found == {"response": {"secret:aws_key": (1, "block")}}


# --- LLM calls ----------------------------------------------------------------------------------


def llm_ctx(text: str, *, stream: bool = False) -> LlmContext:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}
    raw = json.dumps(body).encode()

    async def read() -> bytes:
        return raw

    made = LlmContext(kind="chat", headers={}, read_body=read, caller="a")
    made.request = parse_request(
        "chat", raw, max_depth=32, default_max_tokens=16, max_tokens_limit=0
    )
    return made


def llm_stages(data: DataControls) -> tuple[ScanRequest[LlmContext], ScanAnswer[LlmContext]]:
    return ScanRequest(data, LlmDataView()), ScanAnswer(data, LlmDataView())


PSEUDONYMS = DataRule(direction="request", models=("m",), actions={"pii:card": "pseudonymize"})


async def test_a_prompt_is_pseudonymised_for_the_provider_and_restored_for_the_caller() -> None:
    request, answer = llm_stages(controls(PSEUDONYMS))
    call = llm_ctx(f"my card is {CARD}")
    sent: list[bytes] = []

    async def provider(c: LlmContext) -> Outcome:
        assert c.request is not None
        sent.append(c.request.body)
        said = json.loads(c.request.body)["messages"][0]["content"]
        completion = {"choices": [{"index": 0, "message": {"content": f"noted: {said}"}}]}
        return Reply(200, json.dumps(completion).encode())

    reply = await request(call, lambda c: answer(c, provider))

    assert CARD not in sent[0].decode() and "<CARD_1>" in sent[0].decode()
    assert await call.read_body() == sent[0]  # the audit's digest covers what was sent
    assert isinstance(reply, Reply)
    assert json.loads(reply.body)["choices"][0]["message"]["content"] == f"noted: my card is {CARD}"


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _llm_text(events: list[bytes]) -> str:
    out = ""
    for event in events:
        data = event[6:].strip()
        if data != b"[DONE]":
            for choice in msgspec.json.decode(data).get("choices", []):
                out += choice.get("delta", {}).get("content", "")
    return out


async def test_a_streamed_completion_is_scanned_across_chunks_and_pseudonyms_restored() -> None:
    rules = (PSEUDONYMS, DataRule(direction="response", actions={"secret:*": "redact"}))
    request, answer = llm_stages(controls(*rules))
    call = llm_ctx(f"card {CARD}", stream=True)
    chunks = [
        _chunk("You said <CA"),
        _chunk("RD_1>; the key is AKIAIOSF"),
        _chunk("ODNN7EXAMPLE ok"),
        _chunk(None, "stop"),
        b"data: [DONE]\n\n",
    ]

    async def provider(_: LlmContext) -> Outcome:
        async def events() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return StreamReply(events())

    out = await _read(await request(call, lambda c: answer(c, provider)))

    assert _llm_text(out) == f"You said {CARD}; the key is <AWS_KEY_1> ok"
    assert out[-1] == b"data: [DONE]\n\n"
    assert call.data_found == {
        "request": {"pii:card": (1, "pseudonymize")},
        "response": {"secret:aws_key": (1, "redact")},
    }


async def test_rest_requests_and_streams_are_scanned_too() -> None:
    request, answer = a2a_stages(controls(DataRule(actions={"*": "redact"})))
    call = a2a_ctx("x")
    call.binding = "rest"
    call.body = json.dumps({"message": {"parts": [{"text": f"to {EMAIL}"}]}}).encode()
    after = Next()
    await request(call, after)
    assert json.loads(after.seen[0].body)["message"]["parts"][0]["text"] == "to <EMAIL_1>"

    update = {"artifact": {"artifactId": "x", "parts": [{"text": f"mail {EMAIL}"}]}}
    event = b"data: " + json.dumps({"artifactUpdate": update}).encode() + b"\r\n\r\n"
    call.operation = SEND_STREAMING_MESSAGE
    out = await _read(await answer(call, Next(stream_of(event))))
    pieces = [json.loads(e[6:])["artifactUpdate"]["artifact"]["parts"][0]["text"] for e in out]
    assert pieces == ["mail ", "<EMAIL_1>"]  # the address was held until the stream ended


async def test_held_text_goes_out_in_a_piece_whose_other_fields_were_scanned() -> None:
    _, answer = a2a_stages(controls(DataRule(direction="response", actions={"*": "redact"})))
    piece = {
        "taskId": "t",
        "artifact": {
            "artifactId": "x",
            "name": f"for {EMAIL}",
            "parts": [{"text": "call +1 415 555 26", "metadata": {"to": EMAIL}}],
        },
        "metadata": {"owner": EMAIL},
    }
    first = {"jsonrpc": "2.0", "id": 1, "result": {"artifactUpdate": piece}}
    events = [b"data: " + json.dumps(first).encode() + b"\r\n\r\n", _status("TASK_STATE_FAILED")]
    call = a2a_ctx("hi", operation=SEND_STREAMING_MESSAGE)

    out = await _read(await answer(call, Next(stream_of(*events))))

    assert len(out) == 3  # the piece, the held rest as one more piece, then the status
    assert not any(EMAIL.encode() in event for event in out)
    assert _texts(out) == "call +1 415 555 26"  # not a whole number: nothing to redact
    assert b"TASK_STATE_FAILED" in out[2]


async def test_a_completion_chunk_that_cannot_be_read_ends_the_stream_with_an_error() -> None:
    _, answer = llm_stages(controls())
    call = llm_ctx("hi", stream=True)

    async def provider(_: LlmContext) -> Outcome:
        return stream_of(_chunk("fine so far"), b"data: {not json\n\n", _chunk("never sent"))

    out = await _read(await answer(call, provider))

    assert b"llm_provider_error" in out[-1] and b"never sent" not in b"".join(out)
    assert call.error is not None and call.error.reason == "LLM_PROVIDER_ERROR"

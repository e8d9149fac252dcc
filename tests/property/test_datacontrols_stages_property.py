"""The answer stage's stream scanners under random texts and chunkings: an A2A artifact sent in
pieces and an LLM completion's deltas come out exactly as the whole text redacted would, in
order, with every held character sent before the stream ends, and no detected value left."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st
from test_datacontrols_property import DETECTOR, chunked, texts

from broker.datacontrols import DataControls, DataControlsSettings, DataRule, Subject
from broker.llm.context import LlmContext
from broker.llm.datacontrols import LlmDataView
from broker.protocols.a2a.operations import SEND_STREAMING_MESSAGE
from broker.stages.datacontrols import ScanAnswer
from broker.stages.datacontrols_a2a import A2aDataView
from broker.types import AgentRecord, MediationContext, Outcome, StreamReply

CONTROLS = DataControls(
    DataControlsSettings(enabled=True, rules=(DataRule(actions={"*": "redact"}),))
)
WHOLE = Subject("response", "a", agent="b")
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


async def _no_body() -> bytes:
    return b""


def _events(frames: list[bytes]) -> StreamReply:
    async def events() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    return StreamReply(events())


def _relay(stage: ScanAnswer[MediationContext] | ScanAnswer[LlmContext], ctx: object,
           frames: list[bytes]) -> list[bytes]:  # fmt: skip
    async def run() -> list[bytes]:
        async def upstream(_: object) -> Outcome:
            return _events(frames)

        outcome = await stage(ctx, upstream)  # type: ignore[arg-type]
        assert isinstance(outcome, StreamReply)
        return [event async for event in outcome.events]

    return asyncio.run(run())


def _a2a_piece(text: str, index: int, last: bool) -> bytes:
    update = {
        "taskId": "t",
        "artifact": {"artifactId": "x", "parts": [{"text": text}]},
        "append": index > 0,
        "lastChunk": last,
    }
    return b"data: " + json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"artifactUpdate": update}}).encode() + b"\r\n\r\n"  # noqa: E501


@settings(max_examples=100, deadline=None)
@given(texts, cuts)
def test_an_artifact_in_pieces_is_redacted_like_the_whole_text(text: str, points: list[int]) -> None:  # noqa: E501
    pieces = chunked(text, points) or [""]
    frames = [_a2a_piece(p, i, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    ctx = MediationContext("jsonrpc", "b", "POST", headers={}, read_body=_no_body, caller="a")
    ctx.operation = SEND_STREAMING_MESSAGE
    ctx.target = AgentRecord(name="b", card_json="{}")

    out = _relay(ScanAnswer(CONTROLS, A2aDataView()), ctx, frames)

    streamed = "".join(
        json.loads(e[6:])["result"]["artifactUpdate"]["artifact"]["parts"][0]["text"] for e in out
    )
    assert streamed == CONTROLS.inspect_text(text, WHOLE).payload
    assert not DETECTOR.scan(streamed)


def _llm_chunk(text: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@settings(max_examples=100, deadline=None)
@given(texts, cuts, st.booleans())
def test_completion_deltas_are_redacted_like_the_whole_text(
    text: str, points: list[int], done: bool
) -> None:
    frames = [_llm_chunk(p) for p in chunked(text, points)]
    frames += [b"data: [DONE]\n\n"] if done else []  # a stream may also just end
    ctx = LlmContext(kind="chat", headers={}, read_body=_no_body, caller="a")

    out = _relay(ScanAnswer(CONTROLS, LlmDataView()), ctx, frames)

    streamed = ""
    for event in out:
        data = event[6:].strip()
        if data != b"[DONE]":
            streamed += json.loads(data)["choices"][0]["delta"].get("content", "")
    assert streamed == CONTROLS.inspect_text(text, WHOLE).payload
    assert not DETECTOR.scan(streamed)
    assert (out[-1:] == [b"data: [DONE]\n\n"]) == done

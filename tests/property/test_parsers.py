"""Parsers never crash: whatever bytes arrive, the answer is a BrokerError or a parse."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import BrokerError
from broker.protocols.a2a.answers import reframe
from broker.protocols.a2a.operations import match_rest
from broker.protocols.jsonlimits import json_depth_exceeds
from broker.protocols.sse import SseParser
from broker.settings import LimitSettings
from broker.stages.parse import ParseRequest, decode_envelope
from broker.types import MediationContext, Reply

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=12))
def test_depth_check_agrees_with_a_reference(value: Any, limit: int) -> None:
    body = json.dumps(value).encode()
    assert json_depth_exceeds(body, limit) == (depth(value) > limit)


@given(st.binary(max_size=512))
def test_envelope_decoder_only_raises_broker_errors(body: bytes) -> None:
    with contextlib.suppress(BrokerError):
        decode_envelope(body)


jsonrpc_bodies = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda method, params, rpc_id, version: json.dumps(
            {"jsonrpc": version, "id": rpc_id, "method": method, "params": params}
        ).encode(),
        st.sampled_from(
            [
                "SendMessage",
                "GetTask",
                "CancelTask",
                "SubscribeToTask",
                "ListTasks",
                "CreateTaskPushNotificationConfig",
                "message/send",
                "x",
            ]
        ),
        json_values,
        st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers())),
        st.sampled_from(["2.0", "1.0", 2]),
    ),
)


@settings(max_examples=300)
@given(jsonrpc_bodies, st.sampled_from(["jsonrpc", "rest"]), st.text(max_size=30))
def test_parse_stage_never_crashes(body: bytes, binding: str, tail: str) -> None:
    async def read() -> bytes:
        return body

    async def answered(ctx: MediationContext) -> Reply:
        return Reply(200, b"")

    ctx = MediationContext(
        binding=binding,  # type: ignore[arg-type]
        target_name="t",
        http_method="POST",
        headers={"a2a-version": "1.0"},
        read_body=read,
        rest_tail=tail,
    )
    with contextlib.suppress(BrokerError):
        asyncio.run(ParseRequest(LimitSettings(max_json_depth=8))(ctx, answered))


@given(st.text(max_size=60), st.sampled_from(["GET", "POST", "DELETE", "PUT"]))
def test_rest_matcher_never_crashes(tail: str, method: str) -> None:
    match_rest(method, tail)


events = st.lists(
    st.builds(lambda data: b"data: " + data.encode() + b"\r\n\r\n", st.text(alphabet='ab{}:" ')),
    max_size=6,
)


@given(events, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=8))
def test_sse_split_is_independent_of_chunking(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    parser, seen, pos, i = SseParser(1 << 20), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        seen += [event.raw for event in parser.feed(stream[pos : pos + step])]
        pos, i = pos + step, i + 1
    assert seen == frames


@given(st.binary(max_size=200), st.booleans())
def test_reframing_an_event_only_raises_broker_errors(data: bytes, jsonrpc: bool) -> None:
    with contextlib.suppress(BrokerError):
        reframe("jsonrpc" if jsonrpc else "rest", None, b"data: " + data + b"\r\n\r\n")

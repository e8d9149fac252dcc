"""What an agent may answer (protocols.a2a.answers): A2A shapes only, never in the broker's name."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from broker.errors import UpstreamBadResponseError
from broker.protocols.a2a.answers import (
    SentTask,
    check_jsonrpc,
    check_media_type,
    check_rest,
    reframe,
)
from broker.protocols.a2a.operations import OPERATIONS

SEND = OPERATIONS["SendMessage"]
GET = OPERATIONS["GetTask"]
TASK = {"id": "t1", "contextId": "c", "status": {"state": "TASK_STATE_WORKING"}}
FORGED = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "UNAUTHENTICATED",
          "domain": "a2a-broker", "metadata": {}}  # fmt: skip


def rpc(**members: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, **members}).encode()


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", "application/xml", ""])
def test_answers_that_are_not_json_are_refused(content_type: str) -> None:
    with pytest.raises(UpstreamBadResponseError):
        check_media_type(200, content_type)


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/a2a+json; charset=utf-8"]
)
def test_json_answers_pass(content_type: str) -> None:
    check_media_type(200, content_type)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (418, rpc(result={"task": TASK})),  # a result under an HTTP error status
        (500, rpc(result={"task": TASK})),
        (200, rpc(result={"task": TASK}, error={"code": 1, "message": "x"})),
        (200, rpc(result={"task": TASK, "message": {"messageId": "m"}})),  # not a oneof
        (200, rpc(result={"artifactUpdate": {"taskId": "t"}})),  # not a send's answer
        (200, rpc(result=[])),
        (200, rpc(error={"code": "x", "message": "m"})),
        (200, rpc(error={"code": -32040, "message": "m", "data": [FORGED]})),
        (200, b"<html>"),
        (200, json.dumps({"jsonrpc": "1.0", "id": 1, "result": {}}).encode()),
    ],
)
def test_jsonrpc_answers_out_of_spec_are_bad(status: int, body: bytes) -> None:
    with pytest.raises(UpstreamBadResponseError):
        check_jsonrpc(SEND, status, body)


def test_a_send_s_answer_is_read_once_for_its_shape_and_the_task_it_names() -> None:
    done = {**TASK, "status": {"state": "TASK_STATE_COMPLETED"}}
    assert check_jsonrpc(SEND, 200, rpc(result={"task": TASK})).task == SentTask("t1", False)
    assert check_jsonrpc(SEND, 200, rpc(result={"task": done})).task == SentTask("t1", True)
    assert check_jsonrpc(SEND, 200, rpc(result={"message": {"messageId": "m"}})).task is None
    spaced = b'{"jsonrpc": "2.0", "id": 1, "result":  \n {"task": {"id": "t2"}}}'
    assert check_jsonrpc(SEND, 200, spaced).task == SentTask("t2", False)
    checked = check_rest(SEND, 200, json.dumps({"task": done}).encode())
    assert checked is not None and checked[1] == SentTask("t1", True)


def test_a_jsonrpc_task_and_an_agent_error_pass() -> None:
    assert check_jsonrpc(SEND, 200, rpc(result={"task": TASK})).result is not None
    info = {**FORGED, "domain": "a2a-protocol.org", "reason": "TASK_NOT_FOUND"}
    error = {"code": -32001, "message": "Task not found", "data": [info]}
    assert check_jsonrpc(GET, 200, rpc(error=error)).result is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (302, b""),
        (200, b"not json"),
        (200, json.dumps({"id": 5}).encode()),  # a task's id is a string
        (401, json.dumps({"error": {"code": 401, "details": [FORGED]}}).encode()),
        (404, b"Not Found"),
    ],
)
def test_rest_answers_out_of_spec_are_bad(status: int, body: bytes) -> None:
    with pytest.raises(UpstreamBadResponseError):
        check_rest(GET, status, body)


def test_stream_events_are_reframed_under_the_callers_id() -> None:
    event = (
        b": keep-alive\r\nid: 7\r\ndata: "
        + rpc(result={"task": TASK}).replace(b'"id": 1', b'"id": 99')
        + b"\r\n\r\n"
    )

    frame = reframe("jsonrpc", msgspec.Raw(b'"caller-1"'), event)

    assert frame is not None and frame.task_id == "t1"
    assert frame.data.startswith(b"data: ") and frame.data.endswith(b"\r\n\r\n")
    assert frame.data.count(b"\n") == 2  # one data line, then the blank line
    assert json.loads(frame.data[6:])["id"] == "caller-1"


def test_a_multi_line_event_becomes_one_line() -> None:
    event = b'data: {"statusUpdate":\r\ndata:  {"taskId": "t2"}}\r\n\r\n'

    frame = reframe("rest", None, event)

    assert frame is not None and frame.task_id == "t2"
    assert frame.data == b'data: {"statusUpdate":{"taskId":"t2"}}\r\n\r\n'


@pytest.mark.parametrize(
    ("binding", "event"),
    [
        ("jsonrpc", b"data: {\xe2\x80\xa6 \xff{{ no\r\n\r\n"),
        (
            "jsonrpc",
            b"event: error\r\ndata: "
            + rpc(error={"code": -32040, "message": "x", "data": [FORGED]})
            + b"\r\n\r\n",
        ),
        (
            "rest",
            b"event: error\r\ndata: "
            + json.dumps({"error": {"code": 401, "details": [FORGED]}}).encode()
            + b"\r\n\r\n",
        ),
        ("jsonrpc", b"data: " + rpc(result={"task": TASK}) + b"\r\nevent: error\r\n\r\n"),
        ("rest", b"event: custom\r\ndata: {}\r\n\r\n"),
        ("rest", b"data: {}\r\n\r\n"),
        ("rest", b"foo: bar\r\ndata: {}\r\n\r\n"),
    ],
)
def test_invalid_or_forged_events_end_the_stream(binding: str, event: bytes) -> None:
    with pytest.raises(UpstreamBadResponseError):
        reframe(binding, None, event)  # type: ignore[arg-type]


def test_a_comment_alone_is_dropped() -> None:
    assert reframe("rest", None, b": ping\r\n\r\n") is None

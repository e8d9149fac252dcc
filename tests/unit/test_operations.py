from __future__ import annotations

import pytest

from broker.errors import InvalidUtf8Error, UnsupportedMediaTypeError
from broker.protocols.a2a.operations import match_rest
from broker.stages.parse import check_json_body


@pytest.mark.parametrize(
    ("method", "tail", "operation", "task"),
    [
        ("POST", "/message:send", "SendMessage", None),
        ("POST", "/message:stream", "SendStreamingMessage", None),
        ("GET", "/tasks", "ListTasks", None),
        ("GET", "/tasks/t1", "GetTask", "t1"),
        ("POST", "/tasks/t1:cancel", "CancelTask", "t1"),
        ("POST", "/tasks/t1:subscribe", "SubscribeToTask", "t1"),
        ("GET", "/tasks/t1:subscribe", "SubscribeToTask", "t1"),
        ("POST", "/tasks/t1/pushNotificationConfigs", "CreateTaskPushNotificationConfig", "t1"),
        ("GET", "/tasks/t1/pushNotificationConfigs", "ListTaskPushNotificationConfigs", "t1"),
        ("GET", "/tasks/t1/pushNotificationConfigs/c1", "GetTaskPushNotificationConfig", "t1"),
        (
            "DELETE",
            "/tasks/t1/pushNotificationConfigs/c1",
            "DeleteTaskPushNotificationConfig",
            "t1",
        ),
        ("GET", "/extendedAgentCard", "GetExtendedAgentCard", None),
        ("POST", "/acme/message:send", "SendMessage", None),
        ("GET", "/acme/tasks/t9", "GetTask", "t9"),
        ("GET", "/tasks/tasks/t9", "GetTask", "t9"),
    ],
)
def test_rest_paths_map_to_operations(
    method: str, tail: str, operation: str, task: str | None
) -> None:
    route = match_rest(method, tail)
    assert route is not None
    assert (route.operation.name, route.task_id) == (operation, task)


@pytest.mark.parametrize(
    ("method", "tail"),
    [("GET", "/message:send"), ("DELETE", "/tasks/t1"), ("POST", "/nope"), ("GET", "/a/b/c/d")],
)
def test_unknown_rest_paths_are_refused(method: str, tail: str) -> None:
    assert match_rest(method, tail) is None


async def test_percent_encoded_colon_maps_like_the_plain_path() -> None:
    from broker.settings import LimitSettings
    from broker.stages.parse import ParseRequest
    from broker.types import MediationContext, Reply

    async def read() -> bytes:
        return b'{"message": {"taskId": ""}}'

    seen: list[MediationContext] = []

    async def answer(ctx: MediationContext) -> Reply:
        seen.append(ctx)
        return Reply(200, b"")

    ctx = MediationContext(
        binding="rest",
        target_name="t",
        http_method="POST",
        headers={"a2a-version": "1.0"},
        read_body=read,
        rest_tail="/message%3Astream",
    )
    await ParseRequest(LimitSettings())(ctx, answer)
    assert seen[0].operation is not None
    assert seen[0].operation.name == "SendStreamingMessage"
    assert seen[0].rest_tail == "/message%3Astream"  # forwarded as the caller sent it


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (b'{"text": "plain ASCII"}', True),
        ('{"text": "gr\u00fc\u00dfe \u2603"}'.encode(), True),
        (b'{"text": "\xff"}', False),  # a byte no UTF-8 text has, in a string the broker skips
        (b'{"text": "\xc3"}', False),  # a cut sequence
    ],
)
def test_a_json_body_is_utf_8_whatever_the_broker_reads_of_it(body: bytes, valid: bool) -> None:
    if valid:
        check_json_body("application/json", body)
    else:
        with pytest.raises(InvalidUtf8Error):
            check_json_body("application/json", body)


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),  # no parameters: the usual case, no charset scan
        ("application/json;", True),
        ('Application/JSON ; Charset="UTF-8"', True),
        ("application/json; charset=utf8; q=1", True),
        ("application/json; charset=latin-1", False),
        ("application/json;charset=utf-16", False),
        ("text/plain", False),
    ],
)
def test_a_declared_media_type_must_be_json_in_utf_8(content_type: str, accepted: bool) -> None:
    if accepted:
        check_json_body(content_type, b"{}")
    else:
        with pytest.raises(UnsupportedMediaTypeError):
            check_json_body(content_type, b"{}")

"""The A2A 1.0 operations the broker mediates, and how each binding names them.

One table: the JSON-RPC method name, whether the operation streams, and whether it is scoped to
a task (so the broker must route it to the task's owner and check the caller created it).
REST paths are matched by ``match_rest`` into the same operations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    streaming: bool = False
    task_scoped: bool = False
    # The operation creates or continues a task from a message (SendMessage and its stream).
    sends_message: bool = False
    # It only reads, so sending it twice is harmless: retried once on a pooled connection the
    # agent had closed (never a send, a cancel or a push-config change).
    reads_only: bool = False


# What a body may be sent as: JSON (A2A's own media type included), in UTF-8.
JSON_MEDIA_TYPES = frozenset({"application/json", "application/a2a+json"})

SEND_MESSAGE = Operation("SendMessage", sends_message=True)
SEND_STREAMING_MESSAGE = Operation("SendStreamingMessage", streaming=True, sends_message=True)
GET_TASK = Operation("GetTask", task_scoped=True, reads_only=True)
LIST_TASKS = Operation("ListTasks", reads_only=True)
CANCEL_TASK = Operation("CancelTask", task_scoped=True)
SUBSCRIBE_TO_TASK = Operation(
    "SubscribeToTask", streaming=True, task_scoped=True, reads_only=True
)
CREATE_PUSH_CONFIG = Operation("CreateTaskPushNotificationConfig", task_scoped=True)
GET_PUSH_CONFIG = Operation(
    "GetTaskPushNotificationConfig", task_scoped=True, reads_only=True
)
LIST_PUSH_CONFIGS = Operation(
    "ListTaskPushNotificationConfigs", task_scoped=True, reads_only=True
)
DELETE_PUSH_CONFIG = Operation("DeleteTaskPushNotificationConfig", task_scoped=True)
GET_EXTENDED_CARD = Operation("GetExtendedAgentCard", reads_only=True)

# The operations the spec makes answer PushNotificationNotSupportedError on an agent without push.
PUSH_CONFIG_OPERATIONS = frozenset(
    {CREATE_PUSH_CONFIG, GET_PUSH_CONFIG, LIST_PUSH_CONFIGS, DELETE_PUSH_CONFIG}
)

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        SEND_MESSAGE,
        SEND_STREAMING_MESSAGE,
        GET_TASK,
        LIST_TASKS,
        CANCEL_TASK,
        SUBSCRIBE_TO_TASK,
        CREATE_PUSH_CONFIG,
        GET_PUSH_CONFIG,
        LIST_PUSH_CONFIGS,
        DELETE_PUSH_CONFIG,
        GET_EXTENDED_CARD,
    )
}

# A2A 0.3 JSON-RPC method names. The broker does not translate 0.3; it answers these with
# VersionNotSupported (-32009) so a 0.3 client learns why instead of seeing "method not found".
LEGACY_V03_METHODS = frozenset(
    {
        "message/send",
        "message/stream",
        "tasks/get",
        "tasks/cancel",
        "tasks/resubscribe",
        "tasks/pushNotificationConfig/set",
        "tasks/pushNotificationConfig/get",
        "tasks/pushNotificationConfig/list",
        "tasks/pushNotificationConfig/delete",
        "agent/getAuthenticatedExtendedCard",
    }
)


@dataclass(frozen=True, slots=True)
class RestRoute:
    operation: Operation
    task_id: str | None = None


_SEG = r"[^/]+"
# (HTTP methods, pattern of the path after the optional tenant prefix, operation)
_REST_TABLE: tuple[tuple[frozenset[str], re.Pattern[str], Operation], ...] = tuple(
    (frozenset(methods), re.compile(pattern), op)
    for methods, pattern, op in (
        (("POST",), r"/message:send", SEND_MESSAGE),
        (("POST",), r"/message:stream", SEND_STREAMING_MESSAGE),
        (("GET",), r"/tasks", LIST_TASKS),
        (("GET",), rf"/tasks/(?P<task>{_SEG}?)(?<!:cancel)(?<!:subscribe)", GET_TASK),
        (("POST",), rf"/tasks/(?P<task>{_SEG}):cancel", CANCEL_TASK),
        (("POST", "GET"), rf"/tasks/(?P<task>{_SEG}):subscribe", SUBSCRIBE_TO_TASK),
        (("POST",), rf"/tasks/(?P<task>{_SEG})/pushNotificationConfigs", CREATE_PUSH_CONFIG),
        (("GET",), rf"/tasks/(?P<task>{_SEG})/pushNotificationConfigs", LIST_PUSH_CONFIGS),
        (("GET",), rf"/tasks/(?P<task>{_SEG})/pushNotificationConfigs/{_SEG}", GET_PUSH_CONFIG),
        (
            ("DELETE",),
            rf"/tasks/(?P<task>{_SEG})/pushNotificationConfigs/{_SEG}",
            DELETE_PUSH_CONFIG,
        ),
        (("GET",), r"/extendedAgentCard", GET_EXTENDED_CARD),
    )
)
_TENANT = re.compile(rf"/{_SEG}")


def match_rest(http_method: str, tail: str) -> RestRoute | None:
    """Map an HTTP method and the path after ``/rest`` to an operation, or None.

    The path may carry one leading ``/{tenant}`` segment (A2A multi-tenancy); it is kept in
    the path forwarded upstream, so it needs no special handling beyond matching.
    """
    for candidate in _rest_candidates(tail):
        for methods, pattern, op in _REST_TABLE:
            m = pattern.fullmatch(candidate)
            if m is not None and http_method in methods:
                task = m.groupdict().get("task")
                return RestRoute(op, task or None)
    return None


def _rest_candidates(tail: str) -> tuple[str, ...]:
    prefix = _TENANT.match(tail)
    if prefix is None:
        return (tail,)
    return (tail, tail[prefix.end() :])

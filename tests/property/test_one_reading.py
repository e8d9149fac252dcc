"""One reading: whatever the broker judges in a request is what the a2a-sdk agent acts on.

A differential property test. Hypothesis builds request bodies as JSON *text* (so duplicate
keys, both spellings of a field, key escapes, unknown fields, odd types, unicode, lone
surrogates and invalid UTF-8 inside strings can all be written), for both bindings, REST paths
and query strings included. Each request is read by the broker's own stages (ParseRequest,
ReadParams) and by the SDK's own routes and parsers (``benchmarks.sdk_oracle``). Whenever the
SDK would hand the request to its agent and the broker accepts it, they must agree on every
field the broker judges: the operation, the task, the context, the message's task, reference
tasks, the push URL and its task, the skill, the page token. The broker may refuse anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.sdk_oracle import REST_PREFIX, SdkOracle, SdkReading
from broker.errors import BrokerError
from broker.pipeline.stage import fold
from broker.reading import Reading
from broker.settings import LimitSettings
from broker.stages.parse import ParseRequest, ReadParams
from broker.types import MediationContext, Outcome, Reply

LIMITS = LimitSettings(max_message_parts=8, max_reference_tasks=4)
TASKS = ["t-alice", "t-bob", "", "t\u00e9", "t/1"]

# --- JSON text with everything a real parser can be handed ------------------------------------

Value = Any  # str | int | float | bool | None | Obj | list | bytes (written verbatim)
LOOP = asyncio.new_event_loop()  # one loop for both readers, closed at the end of the module


@dataclass(frozen=True)
class Obj:
    """A JSON object as key/value pairs in order, so a key may appear twice."""

    pairs: tuple[tuple[str, Value], ...]


def encode_key(key: str, escape: bool) -> bytes:
    if escape and key:  # "task\u005fid": the same key for every JSON parser
        return b'"' + key[:-1].encode() + f"\\u{ord(key[-1]):04x}".encode() + b'"'
    return json.dumps(key).encode()


def encode(value: Value) -> bytes:
    if isinstance(value, Obj):
        items = [encode_key(k, esc) + b":" + encode(v) for (k, esc), v in _keys(value)]
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    if isinstance(value, bytes):
        return value  # verbatim (invalid UTF-8 inside a string, a lone surrogate escape)
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _keys(obj: Obj) -> list[tuple[tuple[str, bool], Value]]:
    return [((k.removeprefix("~"), k.startswith("~")), v) for k, v in obj.pairs]


odd_strings = st.sampled_from(
    [b'"\xff\xfe"', b'"t-\xc3\x28"', b'"\\ud800"', b'"t-alice\\u0000"', b'"\\u0074-alice"']
)
ids = st.sampled_from(TASKS) | st.text(max_size=4)
scalars = st.one_of(
    ids,
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_strings,
)


def field_pairs(camel: str, snake: str, values: st.SearchStrategy[Value]) -> st.SearchStrategy:
    """Mostly absent or one plain spelling; else zero, one or both spellings (either order),
    sometimes twice, keys escaped."""
    spelling = st.sampled_from([camel, snake, "~" + camel, "~" + snake] if snake else [camel])
    plain = st.sampled_from([camel, snake] if snake else [camel])
    one = st.tuples(plain, values).map(lambda pair: [pair])
    return st.one_of(st.just([]), one, one, st.lists(st.tuples(spelling, values), max_size=3))


def obj(*fields: st.SearchStrategy) -> st.SearchStrategy[Obj]:
    unknown = st.lists(
        st.tuples(st.sampled_from(["TaskId", "taskID", "ID", "x", "[ext]"]), scalars), max_size=2
    )
    return st.tuples(*fields, unknown, st.randoms()).map(_shuffled)


def _shuffled(parts: tuple[Any, ...]) -> Obj:
    *groups, rnd = parts
    pairs = [pair for group in groups for pair in group]
    rnd.shuffle(pairs)
    return Obj(tuple(pairs))


def mostly(good: st.SearchStrategy[Value]) -> st.SearchStrategy[Value]:
    """``good`` three times in four, else any odd scalar."""
    return st.one_of(good, good, good, scalars)


task_ref = mostly(st.sampled_from(TASKS))
metadata = obj(
    field_pairs("skill", "", mostly(st.sampled_from(["summarize", "x", " ", "fake secret", ""])))
)
parts = st.lists(st.just(Obj((("text", "hi"),))), max_size=10)
message = obj(
    field_pairs("messageId", "message_id", st.just("m1")),
    field_pairs("role", "", st.just("ROLE_USER")),
    field_pairs("parts", "", parts),
    field_pairs("taskId", "task_id", task_ref),
    field_pairs("contextId", "context_id", ids),
    field_pairs("referenceTaskIds", "reference_task_ids", mostly(st.lists(task_ref, max_size=5))),
    field_pairs("metadata", "", mostly(metadata)),
)
push_config = obj(
    field_pairs("url", "", st.sampled_from(["http://169.254.169.254/x", "http://a.example/h"])),
    field_pairs("taskId", "task_id", task_ref),
    field_pairs("id", "", ids),
)
send_params = obj(
    field_pairs("message", "", mostly(message)),
    field_pairs(
        "configuration",
        "",
        obj(
            field_pairs(
                "taskPushNotificationConfig", "task_push_notification_config", push_config
            )
        ),
    ),
)
by_id_params = obj(
    field_pairs("id", "", task_ref),
    field_pairs("taskId", "task_id", task_ref),
    field_pairs("historyLength", "history_length", st.integers(0, 3)),
)
push_params = obj(
    field_pairs("taskId", "task_id", task_ref),
    field_pairs("id", "", ids),
    field_pairs("url", "", st.sampled_from(["http://169.254.169.254/x", "http://a.example/h"])),
)
list_params = obj(
    field_pairs("contextId", "context_id", ids),
    field_pairs("pageToken", "page_token", ids),
    field_pairs("pageSize", "page_size", st.integers(0, 3)),
)
PARAMS_OF: dict[str, st.SearchStrategy[Obj]] = {
    "SendMessage": send_params,
    "SendStreamingMessage": send_params,
    "GetTask": by_id_params,
    "CancelTask": by_id_params,
    "SubscribeToTask": by_id_params,
    "ListTasks": list_params,
    "CreateTaskPushNotificationConfig": push_params,
    "GetTaskPushNotificationConfig": push_params,
    "ListTaskPushNotificationConfigs": push_params,
    "DeleteTaskPushNotificationConfig": push_params,
    "GetExtendedAgentCard": obj(),
}
content_types = st.sampled_from(
    ["application/json"] * 12
    + ["application/a2a+json", "application/json; charset=utf-8", "text/plain", ""]
)


@st.composite
def jsonrpc_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from([*PARAMS_OF, *PARAMS_OF, "message/send", "Nope"]))
    params = draw(mostly(PARAMS_OF.get(method, obj())))
    version = st.sampled_from(["1.0", 2, "2.0 "])
    envelope = [("jsonrpc", draw(st.one_of(*[st.just("2.0")] * 7, version)))]
    odd_id = st.sampled_from([None, 1.5, True, "absent", [1]])
    rpc_id = draw(st.one_of(*[st.sampled_from([1, 2, "r1", "r2"])] * 5, odd_id))
    if rpc_id != "absent":
        envelope.append(("id", rpc_id))
    envelope += [("method", method), ("params", params)]
    if draw(st.sampled_from([False] * 7 + [True])):
        envelope.append(("extra", 1))
    return "POST", "", _headers(draw(content_types)), encode(Obj(tuple(envelope)))


@st.composite
def well_formed_jsonrpc_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    """A valid envelope and an object of params: the fields within are where readings differ."""
    method = draw(st.sampled_from(list(PARAMS_OF)))
    params = draw(PARAMS_OF[method])
    envelope = (("jsonrpc", "2.0"), ("id", 7), ("method", method), ("params", params))
    return "POST", "", _headers("application/json"), encode(Obj(envelope))


REST_SHAPES = [
    ("POST", "/message:send", "SendMessage"),
    ("POST", "/message%3Astream", "SendStreamingMessage"),
    ("GET", "/tasks/{t}", "GetTask"),
    ("POST", "/tasks/{t}:cancel", "CancelTask"),
    ("POST", "/tasks/{t}:subscribe", "SubscribeToTask"),
    ("GET", "/tasks/{t}:subscribe", "SubscribeToTask"),
    ("GET", "/tasks", "ListTasks"),
    ("POST", "/tasks/{t}/pushNotificationConfigs", "CreateTaskPushNotificationConfig"),
    ("GET", "/tasks/{t}/pushNotificationConfigs", "ListTaskPushNotificationConfigs"),
    ("GET", "/tasks/{t}/pushNotificationConfigs/p1", "GetTaskPushNotificationConfig"),
    ("DELETE", "/tasks/{t}/pushNotificationConfigs/p1", "DeleteTaskPushNotificationConfig"),
    ("GET", "/extendedAgentCard", "GetExtendedAgentCard"),
]
query_keys = st.sampled_from(["id", "taskId", "task_id", "pageToken", "contextId", "historyLength"])


@st.composite
def rest_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    http_method, shape, operation = draw(st.sampled_from(REST_SHAPES))
    task = quote(draw(st.sampled_from(["t-alice", "t-bob", "t%C3%A9", "a:b", "x"])), safe="%:")
    tenant = draw(st.sampled_from(["", "", "/acme"]))
    values = st.sampled_from(["t-alice", "t-bob", ""])
    pairs = draw(st.lists(st.tuples(query_keys, values), max_size=3))
    query = "&".join(f"{k}={v}" for k, v in pairs)
    path = tenant + shape.replace("{t}", task) + (f"?{query}" if query else "")
    body = b""
    if http_method == "POST" and draw(st.booleans() | st.just(operation.endswith("Message"))):
        body = encode(draw(mostly(PARAMS_OF[operation])))
    return http_method, path, _headers(draw(content_types)), body


def _headers(content_type: str) -> dict[str, str]:
    headers = {"a2a-version": "1.0"}
    if content_type:
        headers["content-type"] = content_type
    return headers


# --- The broker's reading ----------------------------------------------------------------------


def broker_reading(binding: str, method: str, path: str, headers: dict[str, str], body: bytes
                   ) -> MediationContext | None:  # fmt: skip
    """The context after the broker's ParseRequest and ReadParams, None if it refuses."""
    url = urlsplit(path)

    async def read() -> bytes:
        return body

    async def judged(ctx: MediationContext) -> Outcome:
        return Reply(200, b"")

    ctx = MediationContext(
        binding=binding,  # type: ignore[arg-type]
        target_name="agent",
        http_method=method,
        headers=headers,
        read_body=read,
        rest_tail=url.path,
        query_string=url.query,
    )
    try:
        LOOP.run_until_complete(
            fold([ParseRequest(LIMITS), ReadParams(LIMITS), _End(judged)])(ctx)
        )
    except BrokerError:
        return None
    return ctx


@dataclass
class _End:
    answer: Callable[[MediationContext], Any]

    async def __call__(self, ctx: MediationContext, call_next: Any) -> Outcome:
        result: Outcome = await self.answer(ctx)
        return result


def assert_same_reading(ctx: MediationContext, sdk: SdkReading) -> None:
    reading = ctx.reading
    assert reading is not None and ctx.operation is not None
    assert ctx.operation.name == sdk.operation
    assert (reading.task_id or "") == sdk.task_id
    if sdk.operation in ("SendMessage", "SendStreamingMessage", "ListTasks"):
        assert reading.context_id == sdk.context_id
    named = set(reading.named_tasks)
    assert set(sdk.reference_task_ids) - {""} <= named
    assert ({sdk.task_id, sdk.push_task_id} - {""}) <= named
    assert named <= {sdk.task_id, sdk.push_task_id, *sdk.reference_task_ids}
    if sdk.operation in ("SendMessage", "SendStreamingMessage", "CreateTaskPushNotificationConfig"):
        assert reading.push_url == sdk.push_url
    assert (reading.skill or None) == (sdk.skill or None)
    assert (ctx.skill or None) == (sdk.skill or None)
    if sdk.operation == "ListTasks":
        assert (reading.page_token or "") == sdk.page_token


# --- The properties ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle() -> Any:
    sdk = SdkOracle()
    yield LOOP, sdk
    LOOP.run_until_complete(sdk.__aexit__())


COMMON = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _check(oracle: Any, binding: str, request: tuple[str, str, dict[str, str], bytes]) -> None:
    loop, sdk = oracle
    method, path, headers, body = request
    ctx = broker_reading(binding, method, path, headers, body)
    target = "/rpc" if binding == "jsonrpc" else REST_PREFIX + path
    seen = loop.run_until_complete(sdk.read(method, target, headers, body))
    if ctx is not None and seen is not None:
        assert_same_reading(ctx, seen)


@COMMON
@given(request=jsonrpc_requests())
def test_jsonrpc_the_broker_reads_what_the_agent_reads_or_refuses(oracle: Any, request: Any):
    _check(oracle, "jsonrpc", request)


@COMMON
@given(request=well_formed_jsonrpc_requests())
def test_jsonrpc_params_are_read_as_the_agent_reads_them_or_refused(oracle: Any, request: Any):
    _check(oracle, "jsonrpc", request)


@COMMON
@given(request=rest_requests())
def test_rest_the_broker_reads_what_the_agent_reads_or_refuses(oracle: Any, request: Any):
    _check(oracle, "rest", request)


# --- The attacks of issue 11, by name ----------------------------------------------------------


def rpc(method: str, params: bytes, rpc_id: bytes = b"1") -> bytes:
    head = b'{"jsonrpc":"2.0","id":' + rpc_id + b',"method":"' + method.encode()
    return head + b'","params":' + params + b"}"


NINE_PARTS = b",".join([b'{"text":"p"}'] * 9)
REFUSED = [
    ("GetTask naming a task in id and taskId", rpc("GetTask", b'{"id":"a","taskId":"b"}')),
    ("SubscribeToTask, snake_case", rpc("SubscribeToTask", b'{"id":"a","task_id":"b"}')),
    ("both spellings of taskId", rpc("SendMessage", b'{"message":{"taskId":"a","task_id":"b"}}')),
    ("both spellings of the push config", rpc("SendMessage", b'{"configuration":{"taskPushNotificationConfig":{"url":"http://x"},"task_push_notification_config":{"url":"http://y"}}}')),
    ("no id", b'{"jsonrpc":"2.0","method":"GetTask","params":{"id":"a"}}'),
    ("invalid UTF-8 inside params", rpc("SendMessage", b'{"message":{"x":"\xff"}}')),
    ("whitespace skill", rpc("SendMessage", b'{"message":{"metadata":{"skill":" "}}}')),
    ("a non-string skill", rpc("SendMessage", b'{"message":{"metadata":{"skill":5}}}')),
    ("too many parts", rpc("SendMessage", b'{"message":{"parts":[' + NINE_PARTS + b"]}}")),
]  # fmt: skip


@pytest.mark.parametrize(("what", "body"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_issues_ambiguous_jsonrpc_requests_are_refused(what: str, body: bytes) -> None:
    assert broker_reading("jsonrpc", "POST", "", {"a2a-version": "1.0"}, body) is None


def test_text_plain_is_refused() -> None:
    body = rpc("GetTask", b'{"id":"a"}')
    headers = {"a2a-version": "1.0", "content-type": "text/plain"}
    assert broker_reading("jsonrpc", "POST", "", headers, body) is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/tasks/a/pushNotificationConfigs", b'{"taskId":"b","url":"http://x"}'),
        ("POST", "/tasks/a:cancel", b'{"id":"b"}'),
        ("GET", "/tasks/a?id=b", b""),
        ("GET", "/tasks?pageToken=x&pageToken=y", b""),
    ],
)
def test_rest_bodies_or_queries_naming_another_task_are_refused(
    method: str, path: str, body: bytes
) -> None:
    assert broker_reading("rest", method, path, {"a2a-version": "1.0"}, body) is None


def test_snake_case_message_task_id_is_read_as_the_agent_reads_it() -> None:
    body = rpc("SendMessage", b'{"message":{"task_id":"t-alice","reference_task_ids":["t-x"]}}')
    ctx = broker_reading("jsonrpc", "POST", "", {"a2a-version": "1.0"}, body)
    assert ctx is not None and ctx.reading is not None
    assert ctx.reading == Reading(task_id="t-alice", named_tasks=("t-alice", "t-x"))


def test_snake_case_push_url_is_read() -> None:
    params = b'{"configuration":{"task_push_notification_config":{"url":"http://169.254.169.254/"}}}'
    ctx = broker_reading("jsonrpc", "POST", "", {"a2a-version": "1.0"}, rpc("SendMessage", params))
    assert ctx is not None and ctx.reading is not None
    assert ctx.reading.push_url == "http://169.254.169.254/"


def test_json_rpc_ids_the_broker_echoes_are_those_it_read() -> None:
    body = rpc("GetTask", b'{"id":"a"}', rpc_id=b'"r\\u0031"')
    ctx = broker_reading("jsonrpc", "POST", "", {"a2a-version": "1.0"}, body)
    assert ctx is not None and msgspec.json.decode(ctx.jsonrpc_id or b"") == "r1"


def test_a_rest_push_config_body_with_both_spellings_is_refused_even_if_they_agree() -> None:
    """Found by the fuzz target: both spellings equal to the path's task still read two ways."""
    body = b'{"url":"http://a.example/h","task_id":"t-1","taskId":"t-1"}'
    path = "/tasks/t-1/pushNotificationConfigs"
    assert broker_reading("rest", "POST", path, {"a2a-version": "1.0"}, body) is None

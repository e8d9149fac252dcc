"""Issue 11, attack by attack: two callers (alice, bob) against real a2a-sdk agents.

Each test does what an attacker did against the broker before the one-reading rule, and checks
what a user sees (status, error class) and what reached the agent (its recorder).
"""

from __future__ import annotations

import base64
import json
import uuid
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from a2a.types import TaskState

from broker.delegation.errors import DelegationTokenInvalidError
from broker.errors import (
    AgentNameConfusableError,
    AmbiguousRequestError,
    BrokerError,
    EgressDeniedError,
    HTTPMethodNotAllowedError,
    InvalidAgentCardError,
    InvalidDeadlineError,
    InvalidPageTokenError,
    InvalidRequestError,
    InvalidSkillError,
    InvalidUtf8Error,
    JSONTooDeepError,
    NotificationNotSupportedError,
    PushNotificationNotSupportedError,
    TaskNotFoundError,
    TooManyItemsError,
    UnsupportedMediaTypeError,
    UpstreamBadResponseError,
)

from .conftest import Broker, Upstream, _static_card
from .sdk import client_for, events_until_working, remaining_events, send_request, state_of
from .test_audit_trail import _records
from .wire import (
    A2A_V1,
    assert_jsonrpc_error,
    assert_rest_error,
    jsonrpc,
    recorded_requests,
    sse_events,
    user_message,
)

RPC_TASK_METHODS = ("GetTask", "CancelTask", "SubscribeToTask")


def _marker(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


async def _task_of(http: httpx.AsyncClient, broker: Broker, agent: str, text: str) -> str:
    response = await jsonrpc(http, broker.jsonrpc_url(agent), "SendMessage", _send(text))
    assert response.status_code == 200, response.text
    return str(response.json()["result"]["task"]["id"])


def _send(text: str, **message: Any) -> dict[str, Any]:
    return {"message": user_message(text, **message)}


def assert_error(binding: str, response: httpx.Response, expected: type[BrokerError]) -> None:
    if binding == "JSONRPC":
        assert_jsonrpc_error(response, expected)
    else:
        assert_rest_error(response, expected)


# --- Another caller's task: read, streamed, cancelled --------------------------------------------


@pytest.mark.parametrize("method", RPC_TASK_METHODS)
async def test_bob_cannot_reach_alices_task_by_naming_his_own_in_task_id(
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice_http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient,
    method: str,
):
    """{"id": alice's, "taskId": bob's}: the agent reads id, so the broker refuses it whole."""
    marker = _marker("steal")
    alices = await _task_of(alice_http, broker, "echo", _marker("alice"))
    bobs = await _task_of(bob_http, broker, "echo", _marker("bob"))
    params = {"id": alices, "taskId": bobs, "metadata": {"m": marker}}

    response, _ = await sse_events(
        bob_http, "POST", broker.jsonrpc_url("echo"),
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers=A2A_V1,
    )  # fmt: skip

    assert_jsonrpc_error(response, AmbiguousRequestError)
    assert alices not in response.text
    assert await recorded_requests(bob_http, upstreams["echo"].url, marker) == []


@pytest.mark.parametrize("method", RPC_TASK_METHODS)
async def test_snake_case_task_id_is_refused_too(
    broker: Broker, alice_http: httpx.AsyncClient, bob_http: httpx.AsyncClient, method: str
):
    alices = await _task_of(alice_http, broker, "echo", _marker("alice"))
    bobs = await _task_of(bob_http, broker, "echo", _marker("bob"))

    response, _ = await sse_events(
        bob_http, "POST", broker.jsonrpc_url("echo"),
        json={"jsonrpc": "2.0", "id": 1, "method": method,
              "params": {"id": alices, "task_id": bobs}}, headers=A2A_V1,
    )  # fmt: skip

    assert_jsonrpc_error(response, AmbiguousRequestError)


async def test_bob_cannot_cancel_alices_live_task(
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice_http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient,
):
    """Alice's stream ends COMPLETED, not CANCELED, whatever bob sends."""
    gated = upstreams["gated"]
    client = await client_for(alice_http, broker.agent_url("gated"), "JSONRPC", streaming=True)
    key = _marker("live")
    bobs = await _task_of(bob_http, broker, "echo", _marker("bob"))

    async with aclosing(client.send_message(send_request(key))) as stream:
        alices = (await events_until_working(stream))[0].task.id
        for params in ({"id": alices, "taskId": bobs}, {"id": alices}, {"taskId": alices}):
            response = await jsonrpc(bob_http, broker.jsonrpc_url("gated"), "CancelTask", params)
            assert response.json()["error"]["code"] in (-32010, -32001, -32602), response.text
        await alice_http.post(f"{gated.url}/_gates/{key}/release")
        rest = await remaining_events(stream)

    assert state_of(rest[-1]) == TaskState.TASK_STATE_COMPLETED


# --- snake_case names that skipped the checks ----------------------------------------------------


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_snake_case_message_task_id_cannot_write_into_alices_history(
    broker: Broker,
    upstreams: dict[str, Upstream],
    alice_http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient,
    binding: str,
):
    alices = await _task_of(alice_http, broker, "echo", _marker("alice"))
    marker = _marker("inject")
    params = {"message": {**user_message(marker), "task_id": alices}}

    if binding == "JSONRPC":
        response = await jsonrpc(bob_http, broker.jsonrpc_url("echo"), "SendMessage", params)
    else:
        url = f"{broker.rest_url('echo')}/message:send"
        response = await bob_http.post(url, json=params, headers=A2A_V1)

    assert_error(binding, response, TaskNotFoundError)
    assert await recorded_requests(bob_http, upstreams["echo"].url, marker) == []
    task = await jsonrpc(alice_http, broker.jsonrpc_url("echo"), "GetTask", {"id": alices})
    assert marker not in task.text


async def test_rest_task_id_of_a_foreign_task_looks_like_an_unknown_one(
    broker: Broker, alice_http: httpx.AsyncClient, bob_http: httpx.AsyncClient
):
    """The REST task_id leak: bob's answer for alice's task equals that for a made-up id."""
    alices = await _task_of(alice_http, broker, "echo", _marker("alice"))
    url = f"{broker.rest_url('echo')}/message:send"
    answers = []
    for task_id in (alices, str(uuid.uuid4())):
        params = {"message": {**user_message("x"), "task_id": task_id}}
        response = await bob_http.post(url, json=params, headers=A2A_V1)
        assert_rest_error(response, TaskNotFoundError)
        answers.append(response.json())
    assert answers[0] == answers[1]


async def test_reference_task_ids_of_another_caller_are_refused(
    broker: Broker, alice_http: httpx.AsyncClient, bob_http: httpx.AsyncClient
):
    alices = await _task_of(alice_http, broker, "echo", _marker("alice"))
    params = {"message": {**user_message("x"), "reference_task_ids": [alices]}}

    response = await jsonrpc(bob_http, broker.jsonrpc_url("echo"), "SendMessage", params)

    assert_jsonrpc_error(response, TaskNotFoundError)


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_snake_case_push_url_to_the_metadata_address_is_refused(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, binding: str
):
    marker = _marker("push")
    config = {"task_push_notification_config": {"url": "http://169.254.169.254/latest"}}
    params = {"message": user_message(marker), "configuration": config}

    if binding == "JSONRPC":
        response = await jsonrpc(alice_http, broker.jsonrpc_url("pusher"), "SendMessage", params)
    else:
        url = f"{broker.rest_url('pusher')}/message:send"
        response = await alice_http.post(url, json=params, headers=A2A_V1)

    assert_error(binding, response, EgressDeniedError)
    assert await recorded_requests(alice_http, upstreams["echo"].url, marker) == []


# --- ListTasks pages: the broker's tokens, the caller's tasks -----------------------------------


async def _list(http: httpx.AsyncClient, broker: Broker, binding: str, token: str | None
                ) -> httpx.Response:  # fmt: skip
    params: dict[str, Any] = {"pageSize": 1}
    if token is not None:
        params["pageToken"] = token
    if binding == "JSONRPC":
        return await jsonrpc(http, broker.jsonrpc_url("echo"), "ListTasks", params)
    return await http.get(f"{broker.rest_url('echo')}/tasks", params=params, headers=A2A_V1)


def _page(binding: str, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    return dict(body["result"] if binding == "JSONRPC" else body)


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_list_tasks_pages_hold_only_the_callers_tasks_and_broker_tokens(
    *,
    broker: Broker,
    upstreams: dict[str, Upstream],
    http: httpx.AsyncClient,
    alice_http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient,
    binding: str,
):
    alices = {await _task_of(alice_http, broker, "echo", _marker("alice")) for _ in range(3)}
    mine = {await _task_of(bob_http, broker, "echo", _marker("bob")) for _ in range(2)}
    agent_ids, agent_tokens = await _everything_the_agent_holds(http, upstreams["echo"].url)

    seen: list[str] = []
    token: str | None = None
    for _ in range(len(agent_ids) + 2):  # every page of the agent, bounded
        page = _page(binding, await _list(bob_http, broker, binding, token))
        seen += [t["id"] for t in page["tasks"]]
        token = page.get("nextPageToken") or None
        if token is None:
            break
        assert token not in agent_tokens  # never the agent's own token
        assert not any(i.encode() in _unb64(token) for i in agent_ids)
        # Bound to bob: alice cannot follow it.
        stolen = await _list(alice_http, broker, binding, token)
        assert_error(binding, stolen, InvalidPageTokenError)

    assert token is None  # the listing ended
    assert mine <= set(seen)
    assert not alices & set(seen)
    assert len(seen) == len(set(seen))


async def _everything_the_agent_holds(
    http: httpx.AsyncClient, agent_url: str
) -> tuple[set[str], set[str]]:
    """Every task id the agent lists (asked directly, page after page) and its page tokens."""
    ids: set[str] = set()
    tokens: set[str] = set()
    params: dict[str, Any] = {"pageSize": 100}
    for _ in range(1000):
        page = (await http.get(f"{agent_url}/a2a/rest/tasks", params=params, headers=A2A_V1)).json()
        ids |= {t["id"] for t in page["tasks"]}
        if not page.get("nextPageToken"):
            break
        tokens.add(page["nextPageToken"])
        params["pageToken"] = page["nextPageToken"]
    return ids, tokens


def _unb64(token: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return b""


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_an_agents_own_page_token_is_refused(
    broker: Broker, upstreams: dict[str, Upstream], http: httpx.AsyncClient,
    bob_http: httpx.AsyncClient, binding: str,
):  # fmt: skip
    direct = await http.get(
        f"{upstreams['echo'].url}/a2a/rest/tasks", params={"pageSize": 1}, headers=A2A_V1
    )
    agent_token = direct.json()["nextPageToken"]

    assert_error(
        binding, await _list(bob_http, broker, binding, agent_token), InvalidPageTokenError
    )


# --- Malformed input: documented errors, never a 500 --------------------------------------------


MALFORMED = [
    ("whitespace skill", {"message": user_message("x", metadata={"skill": " "})}, {}, InvalidSkillError),  # noqa: E501
    ("skill header with a space", None, {"A2A-Skill": "fake secret"}, InvalidSkillError),
    ("deadline under 1 ms", None, {"A2A-Deadline": "0.0001"}, InvalidDeadlineError),
    ("deadline not a number", None, {"A2A-Deadline": "soon"}, InvalidDeadlineError),
    ("1001 parts", {"message": {**user_message("x"), "parts": [{"text": "p"}] * 1001}}, {}, TooManyItemsError),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(("what", "params", "headers", "expected"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])  # fmt: skip
async def test_malformed_input_gets_its_documented_error(
    *,
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient,
    what: str, params: dict[str, Any] | None, headers: dict[str, str],
    expected: type[BrokerError],
):  # fmt: skip
    marker = _marker("malformed")
    params = params or {"message": user_message(marker)}
    url = broker.jsonrpc_url("echo")

    response = await jsonrpc(alice_http, url, "SendMessage", params, headers=headers)

    assert_jsonrpc_error(response, expected)
    assert await recorded_requests(alice_http, upstreams["echo"].url, marker) == []


RAW_BODIES = [
    ("no id", b'{"jsonrpc":"2.0","method":"SendMessage","params":{"message":{"messageId":"MARK"}}}',
     "application/json", NotificationNotSupportedError),
    ("invalid UTF-8 in params",
     b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"MARK","x":"\xff"}}}',
     "application/json", InvalidUtf8Error),
    ("text/plain", b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"MARK"}}}',  # noqa: E501
     "text/plain", UnsupportedMediaTypeError),
]  # fmt: skip


@pytest.mark.parametrize(("what", "body", "content_type", "expected"), RAW_BODIES,
                         ids=[r[0] for r in RAW_BODIES])  # fmt: skip
async def test_malformed_envelopes_are_not_forwarded(
    *,
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient,
    what: str, body: bytes, content_type: str, expected: type[BrokerError],
):  # fmt: skip
    marker = _marker("raw")
    headers = {**A2A_V1, "Content-Type": content_type}

    response = await alice_http.post(
        broker.jsonrpc_url("echo"), content=body.replace(b"MARK", marker.encode()), headers=headers
    )

    assert_jsonrpc_error(response, expected)
    assert await recorded_requests(alice_http, upstreams["echo"].url, marker) == []


async def test_an_admin_body_nested_1000_deep_is_refused(admin_http: httpx.AsyncClient):
    card = "1"
    for _ in range(1000):
        card = '{"a":' + card + "}"
    body = '{"name":"deep","card":' + card + "}"

    response = await admin_http.post(
        "/agents", content=body, headers={"Content-Type": "application/json"}
    )

    assert_rest_error(response, JSONTooDeepError)


# --- Tokens: every segment canonical, on the MAC fast path too ----------------------------------


@pytest.mark.parametrize("signature", ["", "AAAA", "x"])
async def test_a_token_with_a_bogus_signature_segment_is_refused(
    broker: Broker, upstreams: dict[str, Upstream], alice_http: httpx.AsyncClient, signature: str
):
    marker = _marker("token")
    await jsonrpc(alice_http, broker.jsonrpc_url("echo"), "SendMessage", _send(marker))
    [seen] = await recorded_requests(alice_http, upstreams["echo"].url, marker)
    token = {k.lower(): v for k, v in seen["headers"]}["a2a-delegation"]
    header, payload, _ = token.split(".")
    echo = broker.callers["echo"]  # the token's audience presents it onwards

    response = await jsonrpc(
        httpx.AsyncClient(headers=echo.headers, trust_env=False),
        broker.jsonrpc_url("gated"),
        "SendMessage",
        _send(_marker("onward")),
        headers={"A2A-Delegation": f"{header}.{payload}.{signature}"},
    )

    assert_jsonrpc_error(response, DelegationTokenInvalidError)


# --- Upstream answers: checked, re-framed, never passing for the broker -------------------------


@pytest.mark.parametrize("agent", ["garbage-rpc418", "garbage-forge", "garbage-html"])
@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_answers_that_are_not_a2a_are_bad_responses(
    broker: Broker, alice_http: httpx.AsyncClient, agent: str, binding: str
):
    if binding == "JSONRPC":
        response = await jsonrpc(alice_http, broker.jsonrpc_url(agent), "SendMessage", _send("x"))
    else:
        url = f"{broker.rest_url(agent)}/message:send"
        response = await alice_http.post(url, json=_send("x"), headers=A2A_V1)

    assert_error(binding, response, UpstreamBadResponseError)


@pytest.mark.parametrize("agent", ["garbage-ssebad", "garbage-sseforge"])
@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_a_bad_or_forged_stream_frame_ends_the_stream_with_the_brokers_error(
    broker: Broker, alice_http: httpx.AsyncClient, agent: str, binding: str
):
    if binding == "JSONRPC":
        body = {
            "jsonrpc": "2.0",
            "id": "s1",
            "method": "SendStreamingMessage",
            "params": _send("x"),
        }
        url, kwargs = broker.jsonrpc_url(agent), {"json": body}
    else:
        url, kwargs = f"{broker.rest_url(agent)}/message:stream", {"json": _send("x")}

    response, events = await sse_events(alice_http, "POST", url, headers=A2A_V1, **kwargs)

    assert response.status_code == 200
    assert [e["event"] for e in events] == ["message", "error"]
    first, last = events[0]["data"], events[1]["data"]
    if binding == "JSONRPC":
        assert first["id"] == "s1" and last["id"] == "s1"  # the caller's id, in the broker's frame
        assert last["error"]["data"][0]["reason"] == UpstreamBadResponseError.reason
    else:
        assert last["error"]["details"][0]["reason"] == UpstreamBadResponseError.reason
    assert "UNAUTHENTICATED" not in json.dumps(events)


# --- Push configs on an agent without push ------------------------------------------------------

PUSH_CALLS = [
    ("CreateTaskPushNotificationConfig", "POST", "/tasks/{}/pushNotificationConfigs"),
    ("GetTaskPushNotificationConfig", "GET", "/tasks/{}/pushNotificationConfigs/p1"),
    ("ListTaskPushNotificationConfigs", "GET", "/tasks/{}/pushNotificationConfigs"),
    ("DeleteTaskPushNotificationConfig", "DELETE", "/tasks/{}/pushNotificationConfigs/p1"),
]


@pytest.mark.parametrize(("method", "http_method", "path"), PUSH_CALLS)
@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_push_configs_on_an_agent_without_push_are_not_supported_first(
    *,
    broker: Broker, bob_http: httpx.AsyncClient, method: str, http_method: str, path: str,
    binding: str,
):  # fmt: skip
    """Before the task is looked up or the URL judged: nothing about either leaks."""
    unknown = str(uuid.uuid4())
    params = {"taskId": unknown, "id": "p1", "url": "http://169.254.169.254/"}
    if binding == "JSONRPC":
        response = await jsonrpc(bob_http, broker.jsonrpc_url("echo"), method, params)
    else:
        url = broker.rest_url("echo") + path.format(unknown)
        body = {"url": "http://169.254.169.254/"} if http_method == "POST" else None
        response = await bob_http.request(http_method, url, json=body, headers=A2A_V1)

    assert_error(binding, response, PushNotificationNotSupportedError)
    if binding == "HTTP+JSON":
        assert response.json()["error"]["status"] == "FAILED_PRECONDITION"


# --- Error shapes per surface ------------------------------------------------------------------


async def test_a_bad_host_on_a_jsonrpc_url_gets_a_jsonrpc_error(
    broker: Broker, alice_http: httpx.AsyncClient
):
    response = await alice_http.post(
        broker.jsonrpc_url("echo"), json={}, headers={**A2A_V1, "Host": "a, b"}
    )

    assert_jsonrpc_error(response, InvalidRequestError)


async def test_llm_endpoint_errors_outside_the_pipeline_are_in_openai_shape(
    broker: Broker, http: httpx.AsyncClient
):
    wrong_method = await http.get(f"{broker.url}/v1/chat/completions")
    bad_host = await http.post(
        f"{broker.url}/v1/chat/completions", json={}, headers={"Host": "a, b"}
    )

    assert wrong_method.status_code == HTTPMethodNotAllowedError.http_status
    for response in (wrong_method, bad_host):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error


# --- Registration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "host", "expected"),
    [
        ("ech0", "127.0.0.1", AgentNameConfusableError),
        ("metadata-agent", "169.254.169.254", InvalidAgentCardError),
        ("mapped-agent", "[::ffff:169.254.169.254]", InvalidAgentCardError),
        ("decimal-agent", "2852039166", InvalidAgentCardError),
        ("private-agent", "10.1.2.3", InvalidAgentCardError),
    ],
)
async def test_refused_registrations_are_audited(
    broker: Broker, admin_http: httpx.AsyncClient, name: str, host: str,
    expected: type[BrokerError],
):  # fmt: skip
    card = _static_card(name, f"http://{host}:9")

    response = await admin_http.post("/agents", json={"name": name, "card": card})

    assert_rest_error(response, expected)
    if expected is InvalidAgentCardError:
        assert "[egress]" in json.dumps(response.json()) or "never connects" in response.text
    refused = [
        r for r in _records(broker)
        if r.get("kind") == "registry.refused" and r.get("detail", {}).get("agent") == name
    ]  # fmt: skip
    assert refused and refused[-1]["detail"]["reason"] == expected.reason

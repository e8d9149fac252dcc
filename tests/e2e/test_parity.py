"""Parity: the same operations sent to the echo agent directly and through the broker agree.

Every answer (HTTP status and JSON body, or the list of SSE events) is compared field by field
after normalising what must differ: generated ids (numbered in order of first appearance, so
"the same id again" still has to hold), timestamps, and the endpoint URLs.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from .conftest import Broker, Upstream
from .wire import A2A_V1, jsonrpc, sse_events, user_message

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
PUSH_URL = "http://127.0.0.1:9/push-hook"


class Normaliser:
    """Replaces ids, timestamps and endpoint URLs with placeholders, consistently per side."""

    def __init__(self, urls: dict[str, str]) -> None:
        self._urls = urls
        self._ids: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self(value[k]) for k in sorted(value)}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        if isinstance(value, str):
            return self._text(value)
        return value

    def _text(self, text: str) -> str:
        for url, placeholder in self._urls.items():
            text = text.replace(url, placeholder)
        text = _TIMESTAMP.sub("<timestamp>", text)
        return _UUID.sub(self._id, text)

    def _id(self, match: re.Match[str]) -> str:
        return self._ids.setdefault(match.group(), f"<id{len(self._ids)}>")


def assert_same_answers(got: list[Any], expected: list[Any]) -> None:
    """Compare operation by operation and report every operation that differs."""
    assert [label for label, _ in got] == [label for label, _ in expected]
    differing = [
        f"{label}:\n  broker: {answer}\n  direct: {wanted}"
        for (label, answer), (_, wanted) in zip(got, expected, strict=True)
        if answer != wanted
    ]
    assert not differing, "\n".join(differing)


def _answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json() if response.content else None


async def _jsonrpc_script(http: httpx.AsyncClient, url: str) -> list[tuple[str, Any]]:
    async def call(method: str, params: dict[str, Any]) -> tuple[str, Any]:
        return method, _answer(await jsonrpc(http, url, method, params, request_id=method))

    sent = await call("SendMessage", {"message": user_message("parity")})
    assert "result" in sent[1][1], sent
    task = sent[1][1]["result"]["task"]
    task_id, push = task["id"], {"taskId": task["id"], "id": "cfg-1"}
    answers = [
        sent,
        await call("GetTask", {"id": task_id, "historyLength": 10}),
        await call("ListTasks", {"contextId": task["contextId"]}),
        await call("CancelTask", {"id": task_id}),
        await call("GetTask", {"id": str(uuid.uuid4())}),
        await call("GetExtendedAgentCard", {}),
        await call("CreateTaskPushNotificationConfig", {"taskId": task_id, "url": PUSH_URL}),
        await call("GetTaskPushNotificationConfig", push),
        await call("ListTaskPushNotificationConfigs", {"taskId": task_id}),
        await call("DeleteTaskPushNotificationConfig", push),
    ]
    for method, params in [
        ("SendStreamingMessage", {"message": user_message("parity stream")}),
        ("SubscribeToTask", {"id": task_id}),
    ]:
        body = {"jsonrpc": "2.0", "id": method, "method": method, "params": params}
        response, events = await sse_events(http, "POST", url, json=body, headers=A2A_V1)
        answers.append((method, (response.status_code, events)))
    return answers


async def _rest_script(http: httpx.AsyncClient, url: str) -> list[tuple[str, Any]]:
    async def call(method: str, path: str, **kwargs: Any) -> tuple[str, Any]:
        response = await http.request(method, url + path, headers=A2A_V1, **kwargs)
        return f"{method} {path}", _answer(response)

    sent = await call("POST", "/message:send", json={"message": user_message("parity")})
    assert "task" in sent[1][1], sent
    task = sent[1][1]["task"]
    tid = task["id"]
    answers = [
        sent,
        await call("GET", f"/tasks/{tid}", params={"historyLength": 10}),
        await call("GET", "/tasks", params={"contextId": task["contextId"]}),
        await call("POST", f"/tasks/{tid}:cancel"),
        await call("GET", f"/tasks/{uuid.uuid4()}"),
        await call("GET", "/extendedAgentCard"),
        await call("POST", f"/tasks/{tid}/pushNotificationConfigs", json={"url": PUSH_URL}),
        await call("GET", f"/tasks/{tid}/pushNotificationConfigs/cfg-1"),
        await call("GET", f"/tasks/{tid}/pushNotificationConfigs"),
        await call("DELETE", f"/tasks/{tid}/pushNotificationConfigs/cfg-1"),
    ]
    for path, body in [
        ("/message:stream", {"message": user_message("parity stream")}),
        (f"/tasks/{tid}:subscribe", None),
    ]:
        response, events = await sse_events(http, "POST", url + path, json=body, headers=A2A_V1)
        answers.append((f"POST {path}", (response.status_code, events)))
    return answers


async def test_jsonrpc_answers_match_direct_calls(
    broker: Broker,
    upstreams: dict[str, Upstream],
    http: httpx.AsyncClient,
    alice_http: httpx.AsyncClient,
):
    direct_url = f"{upstreams['echo'].url}/a2a/jsonrpc"
    direct = Normaliser({direct_url: "<endpoint>", upstreams["echo"].url: "<agent>"})
    brokered = Normaliser(
        {broker.jsonrpc_url("echo"): "<endpoint>", broker.agent_url("echo"): "<agent>"}
    )

    expected = direct(await _jsonrpc_script(http, direct_url))
    got = brokered(await _jsonrpc_script(alice_http, broker.jsonrpc_url("echo")))

    assert_same_answers(got, expected)


async def test_rest_answers_match_direct_calls(
    broker: Broker,
    upstreams: dict[str, Upstream],
    http: httpx.AsyncClient,
    alice_http: httpx.AsyncClient,
):
    direct_url = f"{upstreams['echo'].url}/a2a/rest"
    direct = Normaliser({direct_url: "<endpoint>", upstreams["echo"].url: "<agent>"})
    brokered = Normaliser(
        {broker.rest_url("echo"): "<endpoint>", broker.agent_url("echo"): "<agent>"}
    )

    expected = direct(await _rest_script(http, direct_url))
    got = brokered(await _rest_script(alice_http, broker.rest_url("echo")))

    assert_same_answers(got, expected)

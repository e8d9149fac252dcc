"""The fuzz target's agent: a real a2a-sdk agent that judges every request that reaches it.

    python -m benchmarks.fuzz_agent --port N

An echo agent (DefaultRequestHandler, in-memory tasks) behind two independent checks of what
the broker should never have forwarded, counted at ``GET /_verdict``:

* on the raw request (ASGI middleware): a body that is not UTF-8 JSON or is sent as another
  media type, a JSON-RPC request without an id, both JSON spellings of a field the broker
  judges, a task-scoped method naming a task in a field it does not read, a REST body or query
  naming another task than the path;
* on what the SDK parsed (the request handler): a task named (the operation's, the message's,
  a reference, a push config's) that this agent did not create for the same caller (the caller
  is the hop token's actor), a push URL outside the allowed set, an invalid skill, too many
  parts.

The agent trusts nothing the broker says about ownership: it keeps its own ledger of which
caller created which task.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from a2a.helpers.proto_helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import Part, Task
from google.protobuf.json_format import MessageToDict, ParseDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from benchmarks.upstream import serve

JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
ALLOWED_PUSH_URLS = frozenset({"http://127.0.0.1:9/hook", "http://a2a-push.example/hook"})
MAX_PARTS = 1000
_SKILL = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,128}")
_PAIRS = (
    ("taskId", "task_id"),
    ("contextId", "context_id"),
    ("referenceTaskIds", "reference_task_ids"),
    ("taskPushNotificationConfig", "task_push_notification_config"),
    ("pageToken", "page_token"),
)
_BY_ID = frozenset({"GetTask", "CancelTask", "SubscribeToTask"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Verdict:
    """What reached the agent, and what should not have."""

    def __init__(self) -> None:
        self.requests = 0
        self.violations: Counter[str] = Counter()
        self.examples: list[dict[str, str]] = []

    def flag(self, kind: str, what: object) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 10:
            self.examples.append({"kind": kind, "what": repr(what)[:300]})


VERDICT = Verdict()
OWNERS: dict[str, str] = {}  # task id -> the caller that created it


# --- The raw request ----------------------------------------------------------------------------


def _pairs_hook(found: list[list[tuple[str, Any]]]) -> Callable[[list[tuple[str, Any]]], dict]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found.append(pairs)
        return dict(pairs)

    return hook


def judge_raw(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
    if body:
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media not in ("application/json", "application/a2a+json"):
            VERDICT.flag("media type", media)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            VERDICT.flag("invalid UTF-8", body[:80])
            return
        objects: list[list[tuple[str, Any]]] = []
        try:
            document = json.loads(text, object_pairs_hook=_pairs_hook(objects))
        except ValueError:
            VERDICT.flag("not JSON", body[:80])
            return
        for pairs in objects:
            keys = {k for k, _ in pairs}
            for camel, snake in _PAIRS:
                if camel in keys and snake in keys:
                    VERDICT.flag("both spellings", (camel, body[:200]))
        if path.endswith(JSONRPC_PATH) and isinstance(document, dict):
            _judge_envelope(document)
        elif isinstance(document, dict):
            _judge_rest_body(path, document)
    _judge_query(path, query)


def _judge_envelope(document: dict[str, Any]) -> None:
    if "id" not in document:
        VERDICT.flag("notification", document.get("method"))
    params = document.get("params")
    by_id = document.get("method") in _BY_ID and isinstance(params, dict)
    if by_id and ("taskId" in params or "task_id" in params):
        VERDICT.flag("task named in a field the method ignores", params)


_PATH_TASK = re.compile(r"/tasks/([^/]+?)(?::cancel|:subscribe|/pushNotificationConfigs.*)?$")


def _judge_rest_body(path: str, document: dict[str, Any]) -> None:
    found = _PATH_TASK.search(unquote(path))
    if found is None:
        return
    for key in ("id", "taskId", "task_id"):
        if path.endswith("/pushNotificationConfigs") and key == "id":
            continue
        if key in document and document[key] != found.group(1):
            VERDICT.flag("REST body names another task", (path, document[key]))


def _judge_query(path: str, query: str) -> None:
    found = _PATH_TASK.search(unquote(path))
    pairs = parse_qsl(query, keep_blank_values=True)
    if found is not None:
        for key, value in pairs:
            if key in ("id", "taskId", "task_id") and value != found.group(1):
                VERDICT.flag("REST query names another task", (path, query))
    if len([k for k, _ in pairs if k == "pageToken"]) > 1:
        VERDICT.flag("two page tokens", query)


def judging(app: Any) -> Any:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/a2a/"):
            await app(scope, receive, send)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        VERDICT.requests += 1
        query = scope.get("query_string", b"").decode("latin-1")
        judge_raw(scope["method"], scope["path"], query, headers, body)
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return middleware


# --- What the SDK parsed ------------------------------------------------------------------------


def caller_of(context: ServerCallContext | None) -> str:
    """The hop's caller, from the broker's token (the agent would verify it; here the ledger
    only needs to tell callers apart)."""
    headers = context.state.get("headers", {}) if context is not None else {}
    token = headers.get("a2a-delegation", "")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["act"]["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return "(no token)"


def _judge_tasks(caller: str, *task_ids: str) -> None:
    for task_id in task_ids:
        if task_id and OWNERS.get(task_id) != caller:
            VERDICT.flag("a task the caller did not create", (caller, task_id))


def _judge_send(caller: str, params: Any) -> None:
    message = params.message
    push = params.configuration.task_push_notification_config
    _judge_tasks(caller, message.task_id, *message.reference_task_ids, push.task_id)
    if push.url and push.url not in ALLOWED_PUSH_URLS:
        VERDICT.flag("push URL", push.url)
    if len(message.parts) > MAX_PARTS:
        VERDICT.flag("too many parts", len(message.parts))
    if message.HasField("metadata"):
        skill = MessageToDict(message.metadata).get("skill")
        if skill is not None and not (isinstance(skill, str) and _SKILL.fullmatch(skill)):
            VERDICT.flag("skill", skill)


class JudgingHandler(DefaultRequestHandler):
    """The SDK's default handler, judging each parsed request first and keeping the ledger."""

    async def on_message_send(self, params: Any, context: Any = None) -> Any:
        caller = caller_of(context)
        _judge_send(caller, params)
        result = await super().on_message_send(params, context)
        if isinstance(result, Task):
            OWNERS.setdefault(result.id, caller)
        return result

    async def on_message_send_stream(  # type: ignore[override]
        self, params: Any, context: Any = None
    ) -> AsyncGenerator[Any, None]:
        caller = caller_of(context)
        _judge_send(caller, params)
        async for event in super().on_message_send_stream(params, context):
            if isinstance(event, Task):
                OWNERS.setdefault(event.id, caller)
            yield event

    async def on_get_task(self, params: Any, context: Any = None) -> Any:
        _judge_tasks(caller_of(context), params.id)
        return await super().on_get_task(params, context)

    async def on_cancel_task(self, params: Any, context: Any = None) -> Any:
        _judge_tasks(caller_of(context), params.id)
        return await super().on_cancel_task(params, context)

    async def on_subscribe_to_task(  # type: ignore[override]
        self, params: Any, context: Any = None
    ) -> AsyncGenerator[Any, None]:
        _judge_tasks(caller_of(context), params.id)
        async for event in super().on_subscribe_to_task(params, context):
            yield event

    async def on_create_task_push_notification_config(
        self, params: Any, context: Any = None
    ) -> Any:
        _judge_tasks(caller_of(context), params.task_id)
        if params.url not in ALLOWED_PUSH_URLS:
            VERDICT.flag("push URL", params.url)
        return await super().on_create_task_push_notification_config(params, context)

    async def on_get_task_push_notification_config(self, params: Any, context: Any = None) -> Any:
        _judge_tasks(caller_of(context), params.task_id)
        return await super().on_get_task_push_notification_config(params, context)

    async def on_list_task_push_notification_configs(self, params: Any, context: Any = None) -> Any:
        _judge_tasks(caller_of(context), params.task_id)
        return await super().on_list_task_push_notification_configs(params, context)

    async def on_delete_task_push_notification_config(
        self, params: Any, context: Any = None
    ) -> Any:
        _judge_tasks(caller_of(context), params.task_id)
        return await super().on_delete_task_push_notification_config(params, context)


class EchoExecutor(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            assert context.message is not None  # the SDK sets it for sends
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.add_artifact([Part(text="echo")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is not None:
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


def card(base_url: str) -> Any:
    from a2a.types import AgentCard

    document = {
        "name": "fuzz",
        "description": "judges what reaches it",
        "version": "1.0.0",
        "supportedInterfaces": [
            {
                "url": base_url + JSONRPC_PATH,
                "protocolBinding": "JSONRPC",
                "protocolVersion": "1.0",
            },
            {"url": base_url + REST_PATH, "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
        ],
        "capabilities": {"streaming": True, "pushNotifications": True},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "echo", "name": "echo", "description": "echo", "tags": ["t"]}],
    }
    return ParseDict(document, AgentCard())


def make_app(port: int) -> Any:
    from a2a.server.tasks import InMemoryPushNotificationConfigStore

    agent_card = card(f"http://127.0.0.1:{port}")
    handler = JudgingHandler(
        EchoExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=agent_card,
        push_config_store=InMemoryPushNotificationConfigStore(),
    )

    async def verdict(_: Request) -> Response:
        return JSONResponse(
            {
                "requests": VERDICT.requests,
                "violations": dict(VERDICT.violations),
                "examples": VERDICT.examples,
                "tasks": len(OWNERS),
            }
        )

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/_ready", ready),
        Route("/_verdict", verdict),
        *create_agent_card_routes(agent_card),
        *create_jsonrpc_routes(handler, JSONRPC_PATH),
        *create_rest_routes(handler, path_prefix=REST_PATH),
    ]
    return judging(Starlette(routes=routes))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_agent")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import logging

    logging.getLogger("a2a").setLevel(logging.CRITICAL)  # refusals are expected here
    serve(make_app(args.port), args.port)


if __name__ == "__main__":
    main()

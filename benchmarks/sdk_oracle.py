"""The a2a-sdk's own reading of a request: the oracle the broker's reading is compared with.

A Starlette app built with the SDK's route builders (``create_jsonrpc_routes`` at ``/rpc``,
``create_rest_routes`` under ``/rest``), in process, whose request handler records the protobuf
request the SDK parsed and stops there. What it records is exactly what an a2a-sdk 1.3.0 agent
acts on: ``json.loads`` + ``ParseDict`` for JSON-RPC, ``Parse`` + path + query for REST.

Used by ``tests/property/test_one_reading.py`` (differential property test) and
``benchmarks/fuzz_envelopes.py`` (what reached the agent must be what the broker allowed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.routes import create_jsonrpc_routes, create_rest_routes
from a2a.types import a2a_pb2
from a2a.utils.errors import UnsupportedOperationError
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

JSONRPC_PATH = "/rpc"
REST_PREFIX = "/rest"


@dataclass(frozen=True)
class SdkReading:
    """The fields the broker judges, as the SDK parsed them ("" where absent)."""

    operation: str
    task_id: str = ""  # the task of a task-scoped operation, or message.task_id of a send
    context_id: str = ""
    reference_task_ids: tuple[str, ...] = ()
    push_url: str = ""
    push_task_id: str = ""  # a send's push config task
    skill: object = None  # message.metadata["skill"], None if absent
    page_token: str = ""
    tenant: str = ""


def _send_reading(operation: str, req: a2a_pb2.SendMessageRequest) -> SdkReading:
    message = req.message
    push = req.configuration.task_push_notification_config
    metadata = MessageToDict(message.metadata) if message.HasField("metadata") else {}
    return SdkReading(
        operation=operation,
        task_id=message.task_id,
        context_id=message.context_id,
        reference_task_ids=tuple(message.reference_task_ids),
        push_url=push.url,
        push_task_id=push.task_id,
        skill=metadata.get("skill"),
        tenant=req.tenant,
    )


def reading_of(operation: str, req: Any) -> SdkReading:
    """The judged fields of the protobuf request the SDK handed its handler for ``operation``."""
    if operation in ("SendMessage", "SendStreamingMessage"):
        return _send_reading(operation, req)
    if operation in ("GetTask", "CancelTask", "SubscribeToTask"):
        return SdkReading(operation, task_id=req.id, tenant=req.tenant)
    if operation == "CreateTaskPushNotificationConfig":
        return SdkReading(operation, task_id=req.task_id, push_url=req.url, tenant=req.tenant)
    if operation.endswith(("PushNotificationConfig", "PushNotificationConfigs")):
        return SdkReading(operation, task_id=req.task_id, tenant=req.tenant)
    if operation == "ListTasks":
        return SdkReading(
            operation, context_id=req.context_id, page_token=req.page_token, tenant=req.tenant
        )
    return SdkReading(operation, tenant=getattr(req, "tenant", ""))


@dataclass
class RecordingHandler(RequestHandler):
    """Records what the SDK parsed, then refuses (UnsupportedOperation) so nothing runs."""

    seen: list[SdkReading] = field(default_factory=list)

    def _record(self, operation: str, request: Any) -> None:
        self.seen.append(reading_of(operation, request))
        raise UnsupportedOperationError(message="recorded")

    async def on_get_task(self, params: Any, context: Any = None) -> Any:
        self._record("GetTask", params)

    async def on_list_tasks(self, params: Any, context: Any = None) -> Any:
        self._record("ListTasks", params)

    async def on_cancel_task(self, params: Any, context: Any = None) -> Any:
        self._record("CancelTask", params)

    async def on_message_send(self, params: Any, context: Any = None) -> Any:
        self._record("SendMessage", params)

    async def on_message_send_stream(  # type: ignore[override]
        self, params: Any, context: Any = None
    ) -> AsyncGenerator[Any, None]:
        self._record("SendStreamingMessage", params)
        yield  # pragma: no cover - never reached

    async def on_create_task_push_notification_config(
        self, params: Any, context: Any = None
    ) -> Any:
        self._record("CreateTaskPushNotificationConfig", params)

    async def on_get_task_push_notification_config(self, params: Any, context: Any = None) -> Any:
        self._record("GetTaskPushNotificationConfig", params)

    async def on_subscribe_to_task(  # type: ignore[override]
        self, params: Any, context: Any = None
    ) -> AsyncGenerator[Any, None]:
        self._record("SubscribeToTask", params)
        yield  # pragma: no cover - never reached

    async def on_list_task_push_notification_configs(self, params: Any, context: Any = None) -> Any:
        self._record("ListTaskPushNotificationConfigs", params)

    async def on_delete_task_push_notification_config(
        self, params: Any, context: Any = None
    ) -> Any:
        self._record("DeleteTaskPushNotificationConfig", params)

    async def on_get_extended_agent_card(self, params: Any, context: Any = None) -> Any:
        self._record("GetExtendedAgentCard", params)


class SdkOracle:
    """Sends a request to the in-process SDK app; ``read`` says what the SDK parsed, if anything.

    Use as ``async with SdkOracle() as oracle``.
    """

    def __init__(self) -> None:
        # The SDK logs every refused request with a traceback; here refusals are the point.
        logging.getLogger("a2a").setLevel(logging.CRITICAL)
        self.handler = RecordingHandler()
        app = Starlette(
            routes=[
                *create_jsonrpc_routes(self.handler, JSONRPC_PATH),
                *create_rest_routes(self.handler, path_prefix=REST_PREFIX),
            ]
        )
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://agent"
        )

    async def __aenter__(self) -> SdkOracle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def read(
        self, http_method: str, path: str, headers: dict[str, str], body: bytes
    ) -> SdkReading | None:
        """What the SDK agent would act on for this request (``path`` as sent, query included),
        or None if it refuses it before its handler runs."""
        self.handler.seen.clear()
        await self._client.request(http_method, path, headers=headers, content=body or None)
        return self.handler.seen[0] if self.handler.seen else None

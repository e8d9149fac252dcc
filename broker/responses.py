"""What the broker checks and changes in an upstream's unary answer.

Everything else is relayed as the upstream sent it, upstream A2A errors included. Decoding is
typed and partial (msgspec) so a large answer costs one C-level scan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from broker.errors import UpstreamBadResponseError
from broker.stores.base import TaskRoute, TaskRouteStore
from broker.task_pages import Page, PageTokens, callers_page
from broker.types import MediationContext

CardRewriter = Callable[[dict[str, Any], str], dict[str, Any]]


_ABSENT = msgspec.Raw(b"")


class _RpcResponse(msgspec.Struct):
    # An absent member decodes as the empty Raw; a JSON null as Raw(b"null").
    jsonrpc: str = ""
    id: msgspec.Raw = _ABSENT
    result: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


class _TaskRef(msgspec.Struct):
    id: str = ""


class _SendResult(msgspec.Struct):
    task: _TaskRef | None = None


_rpc_decoder = msgspec.json.Decoder(_RpcResponse)
_send_decoder = msgspec.json.Decoder(_SendResult)
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ResponseInspector:
    def __init__(
        self,
        task_routes: TaskRouteStore,
        route_ttl_s: int,
        rewrite_card: CardRewriter,
        pages: PageTokens,
    ) -> None:
        self._routes = task_routes
        self._ttl = route_ttl_s
        self._rewrite_card = rewrite_card
        self._pages = pages

    async def unary(
        self, ctx: MediationContext, status: int, content_type: str, body: bytes
    ) -> bytes:
        """Check an answer is A2A-shaped and apply the broker's few changes; the bytes to relay."""
        if ctx.binding == "jsonrpc":
            return await self._jsonrpc(ctx, status, body)
        return await self._rest(ctx, status, body)

    async def claim_task(self, ctx: MediationContext, task_id: str) -> None:
        """Record that the caller created ``task_id`` at the target agent."""
        assert ctx.target is not None and ctx.caller is not None  # noqa: S101
        route = TaskRoute(agent=ctx.target.name, task_id=task_id, owner=ctx.caller)
        ctx.task_id = task_id
        tree = ctx.hop.tree if ctx.hop is not None else None  # so a tree can be killed later
        if not await self._routes.claim(route, self._ttl, tree):
            # The agent answered with a task id that another caller owns: never hand it over.
            raise UpstreamBadResponseError(
                "The agent answered with a task that belongs to another caller.",
                detail=f"task id collision at {route.agent}: {task_id}",
            )

    async def _jsonrpc(self, ctx: MediationContext, status: int, body: bytes) -> bytes:
        try:
            env = _rpc_decoder.decode(body)
        except msgspec.DecodeError:
            raise _bad(status, "not a JSON-RPC response") from None
        has_result, has_error = len(env.result) > 0, len(env.error) > 0
        if env.jsonrpc != "2.0" or has_result == has_error:
            raise _bad(status, "not a JSON-RPC 2.0 response")
        if has_error:
            return body  # an upstream error passes through unchanged
        changed = await self._apply(ctx, env.result)
        if changed is None:
            return body
        rpc_id = env.id if len(env.id) else msgspec.Raw(b"null")
        return _encoder.encode({"jsonrpc": "2.0", "id": rpc_id, "result": changed})

    async def _rest(self, ctx: MediationContext, status: int, body: bytes) -> bytes:
        if 300 <= status < 400:
            raise _bad(status, "redirect")
        if not body.strip():
            if status < 300:
                return body
            raise _bad(status, "empty error body")
        try:
            payload = _raw_decoder.decode(body)
        except msgspec.DecodeError:
            raise _bad(status, "not JSON") from None
        if status >= 300:
            return body
        changed = await self._apply(ctx, payload)
        return body if changed is None else _encoder.encode(changed)

    async def _apply(self, ctx: MediationContext, payload: msgspec.Raw) -> Any:
        """The changed payload, or None if it is relayed unchanged."""
        op = ctx.operation
        assert op is not None and ctx.target is not None  # noqa: S101
        if op.sends_message:
            try:
                task = _send_decoder.decode(payload).task
            except msgspec.DecodeError:
                raise _bad(200, "SendMessage result is not a task or message") from None
            if task is not None and task.id:
                await self.claim_task(ctx, task.id)
            return None
        if op.name == "ListTasks":
            return await self._only_callers_tasks(ctx, _any_decoder.decode(payload))
        if op.name == "GetExtendedAgentCard":
            card = _any_decoder.decode(payload)
            if not isinstance(card, dict):
                raise _bad(200, "extended card is not an object")
            return self._rewrite_card(card, ctx.target.name)
        return None

    async def _only_callers_tasks(self, ctx: MediationContext, result: Any) -> Any:
        """The agent's page cut to the caller's tasks, paged with the broker's tokens (0016)."""
        assert ctx.target is not None and ctx.caller is not None  # noqa: S101
        if not isinstance(result, dict):
            raise _bad(200, "ListTasks result is not an object")
        caller, agent = ctx.caller, ctx.target.name
        token = ctx.reading.page_token if ctx.reading is not None else None
        before: Page | None = self._pages.open(caller, agent, token) if token else None

        async def owned(task_id: str) -> bool:
            route = await self._routes.get(agent, task_id)
            return route is not None and route.owner == caller

        def seal(page: Page) -> str:
            return self._pages.seal(caller, agent, page)

        return await callers_page(result, before, owned, seal)


def _bad(status: int, what: str) -> UpstreamBadResponseError:
    return UpstreamBadResponseError(detail=f"upstream HTTP {status}: {what}")

"""What the broker checks and changes in an upstream's unary answer.

The answer must have the A2A shape of its operation (``broker.protocols.a2a.answers``); it is then
relayed as the upstream sent it, upstream A2A errors included, except for a new task (its route is
claimed), ListTasks (the caller's tasks, the broker's page tokens) and the extended card.
Decoding is typed and partial (msgspec) so a large answer costs one C-level scan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from broker.errors import StoreUnavailableError, UpstreamBadResponseError
from broker.protocols.a2a.answers import (
    FINISHED_STATES,
    SentTask,
    check_jsonrpc,
    check_media_type,
    check_rest,
)
from broker.protocols.a2a.answers import bad as _bad
from broker.protocols.a2a.task_pages import Page, PageTokens, callers_page
from broker.stores.base import TaskRoute, TaskRouteStore, TaskTreeIndex
from broker.types import MediationContext

CardRewriter = Callable[[dict[str, Any], str], dict[str, Any]]


class _TaskStatus(msgspec.Struct):
    state: str = ""


class _TaskRef(msgspec.Struct):
    id: str = ""
    status: _TaskStatus | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.state in FINISHED_STATES


_task_decoder = msgspec.json.Decoder(_TaskRef)
log = logging.getLogger("a2a_broker.routes")
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ResponseInspector:
    def __init__(
        self,
        task_routes: TaskRouteStore,
        route_ttl_s: int,
        rewrite_card: CardRewriter,
        pages: PageTokens,
        *,
        finished_ttl_s: int | None = None,
        trees: TaskTreeIndex | None = None,
    ) -> None:
        self._routes = task_routes
        self._trees = trees
        self._ttl = route_ttl_s
        self._finished_ttl = route_ttl_s if finished_ttl_s is None else finished_ttl_s
        self._rewrite_card = rewrite_card
        self._pages = pages

    async def unary(
        self, ctx: MediationContext, status: int, content_type: str, body: bytes
    ) -> bytes:
        """Check an answer is A2A-shaped and apply the broker's few changes; the bytes to relay.

        Raises ``UpstreamBadResponseError`` for anything else (``broker.protocols.a2a.answers``)."""
        op = ctx.operation
        assert op is not None  # noqa: S101 - set by ParseRequest
        check_media_type(status, content_type)
        if ctx.binding == "jsonrpc":
            answer = check_jsonrpc(op, status, body)
            if answer.result is None:
                return body  # an upstream error passes through unchanged
            changed = await self._apply(ctx, answer.result, answer.task)
            if changed is None:
                return body
            rpc_id = answer.id if len(answer.id) else msgspec.Raw(b"null")
            return _encoder.encode({"jsonrpc": "2.0", "id": rpc_id, "result": changed})
        checked = check_rest(op, status, body)
        if checked is None:
            return body
        payload, sent = checked
        changed = await self._apply(ctx, payload, sent)
        return body if changed is None else _encoder.encode(changed)

    async def claim_task(
        self, ctx: MediationContext, task_id: str, *, finished: bool = False
    ) -> None:
        """Record that the caller created ``task_id`` at the target agent.

        A task that had already ended (``finished``) is kept ``finished_ttl_s`` and not indexed
        in its tree: there is nothing left in it for a tree kill to cancel."""
        assert ctx.target is not None and ctx.caller is not None  # noqa: S101
        route = TaskRoute(agent=ctx.target.name, task_id=task_id, owner=ctx.caller)
        ctx.task_id = task_id
        # The tree, so a tree can be killed later.
        tree = ctx.hop.tree if ctx.hop is not None and not finished else None
        ttl = self._finished_ttl if finished else self._ttl
        if not await self._routes.claim(route, ttl, tree, finished=finished):
            # The agent answered with a task id that another caller owns: never hand it over.
            raise UpstreamBadResponseError(
                "The agent answered with a task that belongs to another caller.",
                detail=f"task id collision at {route.agent}: {task_id}",
            )

    async def task_finished(self, ctx: MediationContext, task_id: str) -> None:
        """``task_id``, claimed while it ran (a stream, a non-blocking send), was seen ending:
        keep its route ``finished_ttl_s`` from now, not the running task's week, and drop it
        from the hop's tree. The caller's answer never fails for it: a store that does not
        answer leaves the route to expire on its running TTL (the claim is retried late)."""
        assert ctx.target is not None and ctx.caller is not None  # noqa: S101
        route = TaskRoute(agent=ctx.target.name, task_id=task_id, owner=ctx.caller)
        writes: list[Awaitable[object]] = [
            self._routes.claim(route, self._finished_ttl, None, finished=True)
        ]
        if self._trees is not None and ctx.hop is not None:
            writes.append(self._trees.remove(ctx.hop.tree, route.agent, task_id))
        try:
            # Together: one round trip per node (the route and the tree live in different slots).
            await asyncio.gather(*writes)
        except StoreUnavailableError as err:
            log.debug("finished task %s at %s kept as running: %s", task_id, route.agent,
                      err.detail)  # fmt: skip

    async def _apply(
        self, ctx: MediationContext, payload: msgspec.Raw, sent: SentTask | None
    ) -> Any:
        """The changed payload, or None if it is relayed unchanged. ``sent``: the task a
        send's result names, as its check read it."""
        op = ctx.operation
        assert op is not None and ctx.target is not None  # noqa: S101
        if op.sends_message:
            if ctx.on_answer_checked is not None:  # the settle, queued ahead of the claim
                ctx.on_answer_checked()
            if sent is not None and sent.id:
                await self.claim_task(ctx, sent.id, finished=sent.finished)
            return None
        if op.name in ("GetTask", "CancelTask"):
            # A task the caller polls (after a non-blocking send) or cancels: once it shows a
            # final state, its route is kept as a finished task's.
            try:
                task = _task_decoder.decode(payload)
            except msgspec.DecodeError:
                return None  # the shape was checked (protocols.a2a.answers); nothing to learn here
            if task.id and task.finished:
                await self.task_finished(ctx, task.id)
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

"""Task-scoped calls reach the agent that owns the task, and only the caller that created it.

Every task a request names (the task of a task-scoped operation, ``message.taskId``, each of
``message.referenceTaskIds``, a push config's task) must be one the caller created at this
agent. "Not yours" and "does not exist" give the same TaskNotFoundError, so a caller cannot
probe for other callers' task ids. Push-notification URLs pass the broker's egress rules before
an agent is asked to call them. ListTasks pages with the broker's own tokens (task_pages).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from broker.errors import TaskNotFoundError
from broker.protocols.a2a.operations import LIST_TASKS
from broker.protocols.a2a.task_pages import PageTokens, jsonrpc_body_for_agent, query_for_agent
from broker.stores.base import TaskRouteStore
from broker.types import CallNext, MediationContext, Outcome

PushUrlCheck = Callable[[str], Awaitable[None]]


class TaskScope:
    def __init__(
        self, task_routes: TaskRouteStore, check_push_url: PushUrlCheck, pages: PageTokens
    ) -> None:
        self._routes = task_routes
        self._check_push_url = check_push_url
        self._pages = pages

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        reading = ctx.reading
        assert reading is not None and ctx.target is not None  # noqa: S101 - earlier stages
        for task_id in reading.named_tasks:
            await self._check_owner(ctx.target.name, task_id, ctx.caller)
        if reading.push_url:
            if ctx.pending_checks is not None:  # a hop the guards refuse resolves no URL
                await ctx.pending_checks()
            await self._check_push_url(reading.push_url)
        if ctx.operation is LIST_TASKS and reading.page_token:
            self._agent_page(ctx, reading.page_token)
        return await call_next(ctx)

    async def _check_owner(self, agent: str, task_id: str, caller: str | None) -> None:
        route = await self._routes.get(agent, task_id)
        if route is None or route.owner != caller:
            raise TaskNotFoundError

    def _agent_page(self, ctx: MediationContext, token: str) -> None:
        """The agent is asked for the page the caller's token stands for, with its own token."""
        assert ctx.caller is not None and ctx.target is not None  # noqa: S101
        page = self._pages.open(ctx.caller, ctx.target.name, token)
        if ctx.binding == "jsonrpc":
            assert ctx.jsonrpc_id is not None and ctx.params is not None  # noqa: S101
            ctx.body = jsonrpc_body_for_agent(ctx.jsonrpc_id, ctx.params, page.agent_token)
        else:
            ctx.query_string = query_for_agent(ctx.query_string, page.agent_token)

"""Task-scoped calls reach the agent that owns the task, and only the caller that created it.

"Not yours" and "does not exist" give the same TaskNotFoundError, so a caller cannot probe
for other callers' task ids. Push-notification URLs pass the broker's egress rules before an
agent is asked to call them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from broker.errors import TaskNotFoundError
from broker.stages.parse import push_url_from_params
from broker.stores.base import TaskRouteStore
from broker.types import CallNext, MediationContext, Outcome

PushUrlCheck = Callable[[str], Awaitable[None]]


class TaskScope:
    def __init__(self, task_routes: TaskRouteStore, check_push_url: PushUrlCheck) -> None:
        self._routes = task_routes
        self._check_push_url = check_push_url

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        op = ctx.operation
        assert op is not None and ctx.target is not None  # noqa: S101 - set by earlier stages
        if ctx.task_id is not None and (op.task_scoped or op.sends_message):
            await self._check_owner(ctx.target.name, ctx.task_id, ctx.caller)
        if op.sends_message or op.name == "CreateTaskPushNotificationConfig":
            url = push_url_from_params(ctx.params, op.sends_message)
            if url:
                await self._check_push_url(url)
        return await call_next(ctx)

    async def _check_owner(self, agent: str, task_id: str, caller: str | None) -> None:
        route = await self._routes.get(agent, task_id)
        if route is None or route.owner != caller:
            raise TaskNotFoundError

"""Resolve the target agent named in the URL to its registry record."""

from __future__ import annotations

from broker.errors import AgentNotFoundError, AgentSuspendedError, BindingNotSupportedError
from broker.stores.base import AgentRegistry
from broker.types import CallNext, MediationContext, Outcome


class ResolveTarget:
    """Sets ``ctx.target``; refuses unknown and suspended agents and bindings they do not offer."""

    def __init__(self, registry: AgentRegistry) -> None:
        self._registry = registry

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        record = await self._registry.get(ctx.target_name)
        if record is None:
            raise AgentNotFoundError(metadata={"agent": ctx.target_name})
        if record.status == "suspended":
            raise AgentSuspendedError(metadata={"agent": ctx.target_name})
        url = record.jsonrpc_url if ctx.binding == "jsonrpc" else record.rest_url
        if not url:
            raise BindingNotSupportedError(metadata={"agent": ctx.target_name})
        ctx.target = record
        return await call_next(ctx)

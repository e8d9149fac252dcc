"""Stopping a whole task tree: refuse further delegation in it and cancel what still runs.

The tree is marked killed in the store first, so every replica refuses new hops in it at once
(the delegation stage checks on every request); then every task the index knows for the tree is
sent CancelTask at the agent that runs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from broker.audit.recorder import AuditRecorder
from broker.containment.global_kill import GlobalKillSwitch
from broker.delegation.tokens import TokenMinter, hop_scope
from broker.errors import (
    AgentSuspendedError,
    BrokerError,
    CallerSuspendedError,
    TreeKilledError,
)
from broker.outbound.credentials import upstream_auth
from broker.outbound.transport import Transport
from broker.settings import Settings
from broker.stores.base import Stores
from broker.types import MediationContext

log = logging.getLogger("a2a_broker.killswitch")
OPERATOR = "a2a-broker-operator"  # the caller named in the tokens of the broker's own cancels
_decoder = msgspec.json.Decoder()


class TreeKiller:
    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        upstream: Transport,
        minter: TokenMinter,
        audit: AuditRecorder,
    ) -> None:
        self._audit = audit
        self._settings = settings
        self._stores = stores
        self._upstream = upstream
        self._minter = minter

    async def kill(self, tree: str) -> dict[str, Any]:
        """Kill ``tree`` and cancel its tasks; what happened to each task."""
        until = time.time() + self._settings.delegation.token_ttl_s + 60
        await self._audit.event("killswitch", "admin", action="tree.kill", tree=tree)
        newly = await self._stores.revocations.kill_tree(tree, until)
        members = await self._stores.task_trees.members(tree)
        outcomes = await asyncio.gather(*(self._cancel(tree, a, t) for a, t in members))
        log.warning("task tree %s killed; %d task(s) sent CancelTask", tree, len(members))
        return {"tree": tree, "killed": True, "newly_killed": newly, "tasks": list(outcomes)}

    async def show(self, tree: str) -> dict[str, Any]:
        members = await self._stores.task_trees.members(tree)
        return {
            "tree": tree,
            "killed": await self._stores.revocations.is_tree_killed(tree),
            "tasks": [{"agent": a, "task_id": t} for a, t in members],
        }

    async def _cancel(self, tree: str, agent: str, task_id: str) -> dict[str, str]:
        outcome = {"agent": agent, "task_id": task_id}
        try:
            outcome["result"] = await self._send_cancel(agent, task_id)
        except BrokerError as err:
            outcome["result"] = err.reason
        if outcome["result"] in ("cancelled", "TASK_NOT_CANCELABLE", "TASK_NOT_FOUND"):
            await self._stores.task_trees.remove(tree, agent, task_id)
        return outcome

    async def _send_cancel(self, agent: str, task_id: str) -> str:
        record = await self._stores.registry.get(agent)
        if record is None or not record.jsonrpc_url:
            return "AGENT_NOT_FOUND" if record is None else "BINDING_NOT_SUPPORTED"
        token, _ = self._minter.mint_origin(OPERATOR, agent, hop_scope("CancelTask"))
        body = msgspec.json.encode(
            {"jsonrpc": "2.0", "id": 1, "method": "CancelTask", "params": {"id": task_id}}
        )
        headers = {"content-type": "application/json", "a2a-version": "1.0"}
        headers.update(upstream_auth(self._settings.upstream_credentials.get(agent), token))
        response = await self._upstream.send(
            "POST", record.jsonrpc_url, headers=headers, body=body, stream=False
        )
        try:
            body = await response.read(self._settings.limits.max_response_bytes)
        finally:
            response.close()
        try:
            return _cancel_result(_decoder.decode(body))
        except msgspec.DecodeError:
            return "UPSTREAM_BAD_RESPONSE"


def _cancel_result(answer: Any) -> str:
    if isinstance(answer, dict) and "result" in answer:
        return "cancelled"
    error = answer.get("error") if isinstance(answer, dict) else None
    data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return str(data[0].get("reason", "UPSTREAM_ERROR"))
    return "UPSTREAM_BAD_RESPONSE"


class LiveStreamCheck:
    """Ends open streams when an operator stops them: the global kill switch, a suspended
    caller or target, or a killed tree. Run by the relay about once a second per open stream
    (two or three reads)."""

    def __init__(self, stores: Stores, kill: GlobalKillSwitch | None = None) -> None:
        self._registry = stores.registry
        self._revocations = stores.revocations
        self._kill = kill

    async def __call__(self, ctx: MediationContext) -> None:
        assert ctx.caller is not None and ctx.target is not None  # noqa: S101 - a live stream
        if self._kill is not None:
            self._kill.check()
        caller = await self._registry.get(ctx.caller)
        if caller is not None and caller.status == "suspended":
            raise CallerSuspendedError
        target = await self._registry.get(ctx.target.name)
        if target is None or target.status == "suspended":
            raise AgentSuspendedError(metadata={"agent": ctx.target.name})
        if ctx.hop is not None and await self._revocations.is_tree_killed(ctx.hop.tree):
            raise TreeKilledError(metadata={"tree": ctx.hop.tree})

"""How an MCP call waits for a human (an ``approve`` policy rule on a tool): like an LLM call,
synchronously refused with ``APPROVAL_PENDING`` (the approval id, Retry-After); the same call
sent again with ``A2A-Broker-Approval: <id>`` once approved goes ahead, once. The approval is
bound to the digest of the exact call: server, method and name, the caller's bytes, the chain.
"""

from __future__ import annotations

from typing import Any

from broker.approvals.action import action_digest
from broker.approvals.stages import pending_error
from broker.mcp.context import McpContext
from broker.stores.approvals_base import ApprovalRecord
from broker.types import Outcome


class McpApprovals:
    """The approval format of MCP calls, for the shared ``RequireApproval`` stage."""

    def __init__(self, retry_after_s: float) -> None:
        self._retry_after_s = retry_after_s

    def action(self, ctx: McpContext) -> tuple[str, dict[str, Any]]:
        judged = ctx.judged
        operation = f"mcp:{judged.action}" if judged is not None else "mcp:"
        digest = action_digest(
            protocol="mcp", target=ctx.target, operation=operation, body=ctx.body,
            chain=ctx.chain or (ctx.caller or "",),
        )  # fmt: skip
        what = judged.name if judged is not None and judged.name else operation
        fields = {
            "protocol": "mcp",
            "target": ctx.target,
            "operation": operation[:256],
            "tree": ctx.tree or "",
            "summary": f"{ctx.caller} asks to call {what[:128]} on {ctx.target}",
        }
        return digest, fields

    def call(self, ctx: McpContext) -> bytes:
        return b""  # the caller sends the call again; nothing is forwarded by the broker

    async def held(self, ctx: McpContext, record: ApprovalRecord) -> Outcome:
        raise pending_error(record, self._retry_after_s)

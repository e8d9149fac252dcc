"""The audit records of MCP requests, like A2A requests and LLM calls: a refusal is one record;
a forwarded request is a decision record, durable before the server is called, and an outcome
record when the answer (or the stream) ends.

Tool arguments never appear: the record holds the method and what it acts on, the digest of
the whole body, and of the arguments a digest and their top-level names
(``broker.mcp.audit_view``). A redacted copy of the body is kept only for the callers and
servers named in ``[audit] payload_agents`` (``broker.audit.redact``), as for A2A.
"""

from __future__ import annotations

import time
from typing import Any

from broker.audit.recorder import digest, error_detail
from broker.errors import CallerSuspendedError, InvalidCredentialError, UnauthenticatedError
from broker.mcp.audit_view import audit_fields
from broker.mcp.context import McpContext

_AUTH_REFUSALS = (UnauthenticatedError, InvalidCredentialError, CallerSuspendedError)


def mcp_fields(
    ctx: McpContext, *, phase: str, status: int, answer: str = ""
) -> dict[str, Any]:
    err = ctx.error
    judged = ctx.judged
    detail: dict[str, str | int | bool] = {"phase": phase, "binding": "mcp"}
    if ctx.message is not None:
        for key, value in audit_fields(ctx.message).items():
            detail[key] = ",".join(value) if isinstance(value, list) else value
        if judged is not None and judged.name:  # on the virtual server: the server's own name
            detail["mcp_name"] = judged.name[:512]
    if ctx.virtual:
        detail["virtual"] = True
    if ctx.hop is not None:
        detail["token.jti"], detail["token.exp"] = ctx.hop.jti, ctx.hop.exp
    if ctx.policy_version:
        detail["policy_version"] = ctx.policy_version
    if ctx.trace_id:
        detail["trace_id"] = ctx.trace_id
    if err is not None:
        detail.update(error_detail(err))
    return {
        "kind": "auth.failure" if isinstance(err, _AUTH_REFUSALS) else "request",
        "request_id": ctx.request_id,
        "caller": ctx.caller or "",
        "chain": list(ctx.chain),
        "tree": ctx.tree or "",
        "target": ctx.target,
        "operation": f"mcp:{ctx.message.method}" if ctx.message is not None
        else f"mcp:{judged.method}" if judged is not None else "mcp:",
        "skill": judged.name[:512] if judged is not None else "",
        "decision": "deny" if err is not None and phase == "refused" else "allow",
        "reason": err.reason if err is not None else "",
        "rule": ctx.policy_rule,
        "status": status,
        "latency_us": int((time.perf_counter() - ctx.started) * 1_000_000),
        "request_digest": digest(ctx.body),
        "response_digest": answer,
        "detail": detail,
        # Not a record field: kept redacted for [audit] payload_agents, else dropped.
        "_body": ctx.body if phase != "outcome" else None,
    }


class McpAudit:
    """An MCP request's records, for the shared ``broker.stages.audit.AuditForward``."""

    async def decision(self, ctx: McpContext) -> dict[str, Any]:
        return mcp_fields(ctx, phase="forward", status=0)

    def outcome(self, ctx: McpContext, status: int, answer: str) -> dict[str, Any]:
        return mcp_fields(ctx, phase="outcome", status=status, answer=answer)

    def staged(self, ctx: McpContext) -> bool:
        return False  # a tool acts as soon as it is called: the decision is durable first

    def refusal(self, ctx: McpContext, status: int) -> dict[str, Any]:
        return mcp_fields(ctx, phase="refused", status=status)

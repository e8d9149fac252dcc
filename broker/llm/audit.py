"""Audit of LLM calls, like A2A requests: a refusal is one record; a forwarded call is a decision
record, durable before the provider is called, and an outcome record with the tokens and cost
charged. The body appears only as a digest; the provider key never appears."""

from __future__ import annotations

import time
from typing import Any

from broker.audit.recorder import data_detail, digest, error_detail
from broker.budgets.model import Usage
from broker.llm.context import LlmContext
from broker.observability.record import observe_llm_usage


def llm_fields(
    ctx: LlmContext, *, phase: str, status: int, body: bytes = b"", answer: str = ""
) -> dict[str, Any]:
    err = ctx.error
    usage = ctx.usage or Usage()
    model = ctx.request.model if ctx.request is not None else ""
    if phase == "outcome" and ctx.usage is not None:
        observe_llm_usage(model, usage)  # once per call: its outcome is recorded once
    return {
        "kind": "request",
        "request_id": ctx.request_id,
        "caller": ctx.caller or "",
        "chain": list(ctx.chain),
        "tree": ctx.tree or "",
        "target": f"model:{model}" if model else "",
        "operation": f"llm:{ctx.kind}",
        "decision": "deny" if err is not None and phase == "refused" else "allow",
        "reason": err.reason if err is not None else "",
        "rule": ctx.policy_rule,
        "status": status,
        "latency_us": int((time.perf_counter() - ctx.started) * 1_000_000),
        "tokens_in": usage.tokens_in,
        "tokens_out": usage.tokens_out,
        "cost_micro": usage.cost_micro,
        "request_digest": digest(body),
        "response_digest": answer,
        "detail": _detail(ctx, phase),
        "_body": body,  # kept redacted for agents in [audit] payload_agents, else dropped
    }


def _detail(ctx: LlmContext, phase: str) -> dict[str, Any]:
    detail: dict[str, Any] = {"phase": phase, "binding": "openai"}
    if ctx.policy_version:
        detail["policy_version"] = ctx.policy_version
    if ctx.trace_id:
        detail["trace_id"] = ctx.trace_id
    if ctx.error is not None:
        detail.update(error_detail(ctx.error))
    if ctx.data_found or ctx.data_tags:
        detail.update(data_detail(ctx))
    return detail


class LlmAudit:
    """An LLM call's records, for the shared ``broker.stages.audit.AuditForward`` and
    ``broker.stages.boundary.ErrorBoundary``: the decision carries the body's digest; the
    outcome the tokens and cost charged; a refusal its reason."""

    async def decision(self, ctx: LlmContext) -> dict[str, Any]:
        return llm_fields(ctx, phase="forward", status=0, body=await ctx.read_body())

    def outcome(self, ctx: LlmContext, status: int, answer: str) -> dict[str, Any]:
        if ctx.meter is not None and ctx.meter.started and ctx.usage is None:
            ctx.usage = ctx.meter.usage()  # a stream's usage, as far as it went
        return llm_fields(ctx, phase="outcome", status=status, answer=answer)

    def staged(self, ctx: LlmContext) -> bool:
        return False  # the provider may charge at once: the decision is durable first

    def refusal(self, ctx: LlmContext, status: int) -> dict[str, Any]:
        return llm_fields(ctx, phase="refused", status=status)

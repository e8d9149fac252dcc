"""What the broker keeps of an A2A call held for approval, and how the caller sees it wait.

``HeldCall`` is the call as received (the headers the pipeline reads, never a credential; the
body's bytes; who sent it, along which chain), kept in the approval store and turned back into
a ``MediationContext`` to forward once approved. ``task_for`` is the broker-owned task as the
approval stands (docs/decisions/0053).
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.delegation.tokens import DelegationClaims
from broker.protocols.a2a import approval_task as wire
from broker.stores.approvals_base import ApprovalRecord
from broker.types import Binding, MediationContext

# Headers kept with a held call: what the stages before the forward read, nothing secret.
KEPT_HEADERS = (
    "content-type", "accept", "a2a-version", "a2a-extensions", "a2a-skill", "a2a-deadline",
)
_STATE: dict[str, str] = {
    "pending": "TASK_STATE_AUTH_REQUIRED",
    "approved": "TASK_STATE_AUTH_REQUIRED",
    "used": "TASK_STATE_WORKING",
    "denied": "TASK_STATE_REJECTED",
    "expired": "TASK_STATE_FAILED",
    "voided": "TASK_STATE_FAILED",
    "cancelled": "TASK_STATE_CANCELED",
}
# The stable reason each ending gives (status message metadata; docs/approvals.md).
REASONS: dict[str, str] = {
    "denied": "APPROVAL_DENIED",
    "expired": "APPROVAL_EXPIRED",
    "voided": "APPROVAL_VOIDED",
    "cancelled": "APPROVAL_CANCELLED",
}


class HeldCall(msgspec.Struct, frozen=True, kw_only=True):
    """What the broker keeps of a held A2A call, to forward it unchanged once approved."""

    binding: Binding
    target: str
    http_method: str
    rest_tail: str = ""
    query_string: str = ""
    headers: dict[str, str]
    body: bytes
    caller: str
    chain: tuple[str, ...]
    parent: DelegationClaims | None = None
    context_id: str = ""


HELD_DECODER = msgspec.json.Decoder(HeldCall)


def task_for(record: ApprovalRecord, context_id: str, note: str = "") -> dict[str, Any]:
    """The broker-owned task as ``record`` stands."""
    state = _STATE[record.state]
    meta = {
        "id": record.id,
        "state": record.state,
        "expiresAt": wire.timestamp(record.expires_at),
        "reason": REASONS.get(record.state, ""),
    }
    return wire.task(record.id, context_id or record.id, state, note or _text(record),
                     meta=meta, at=record.decided_at or record.created_at)


def _text(record: ApprovalRecord) -> str:
    until = wire.timestamp(record.expires_at)
    match record.state:
        case "pending" | "approved":
            return (f"Awaiting human approval until {until}: {record.summary}"
                    f" (approval {record.id}).")
        case "denied":
            return f"A human denied this call: {record.reason or 'no reason given'}."
        case "expired":
            return f"Nobody approved this call before {until}."
        case "voided":
            return f"The approval was voided: {record.reason}."
        case "cancelled":
            return "The caller cancelled the call while it awaited approval."
        case _:
            return "Approved: the call was forwarded to the agent."




def answered(body: bytes) -> dict[str, Any] | None:
    """The StreamResponse (``{"task": …}`` or ``{"message": …}``) of a kept unary answer."""
    if not body:
        return None
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
        answer = answer["result"]  # JSON-RPC
    if isinstance(answer, dict) and ("task" in answer or "message" in answer):
        return {k: v for k, v in answer.items() if k in ("task", "message")}
    return None


def context_of(held: HeldCall, approval_id: str) -> MediationContext:
    """A context for the kept call, as authentication and the delegation context left it
    when it was received (caller, verified chain), going ahead under ``approval_id``."""
    body = held.body

    async def read_body() -> bytes:
        return body

    ctx = MediationContext(
        headers=held.headers, read_body=read_body, binding=held.binding,
        target_name=held.target, http_method=held.http_method, rest_tail=held.rest_tail,
        query_string=held.query_string,
    )  # fmt: skip
    ctx.caller, ctx.parent, ctx.chain = held.caller, held.parent, held.chain
    ctx.approval_id = approval_id
    return ctx


def for_agent_task(ctx: MediationContext, agent_task: str) -> None:
    """Point a task-scoped request at the agent's own task id instead of the broker's."""
    assert ctx.task_id is not None  # noqa: S101
    if ctx.binding == "rest":
        ctx.rest_tail = ctx.rest_tail.replace(f"/tasks/{ctx.task_id}", f"/tasks/{agent_task}")
    else:
        assert ctx.operation is not None and ctx.params is not None  # noqa: S101
        params = msgspec.json.decode(ctx.params)
        params["id"] = agent_task
        ctx.body = msgspec.json.encode({
            "jsonrpc": "2.0", "id": ctx.jsonrpc_id, "method": ctx.operation.name,
            "params": params,
        })  # fmt: skip
    ctx.approval_task, ctx.task_id = ctx.task_id, agent_task

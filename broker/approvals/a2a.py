"""A2A calls held for approval: the caller gets a task the broker owns, which becomes the
agent's once the call is approved and forwarded.

* A held send answers at once with a broker-owned task (``approval-<hex>``) in
  ``TASK_STATE_AUTH_REQUIRED`` (``broker.protocols.a2a.approval_task``); its route is recorded
  for the caller, so GetTask / CancelTask / SubscribeToTask reach it through the broker like any
  task. A held stream sends that task as its first event and stays open until the decision.
* Approved: the broker forwards the call it kept, the exact bytes received, through the rest of
  the pipeline again (``resume``: policy, guards and budget are asked again, a fresh hop token is
  minted), exactly once (the approval is used up by the approval stage). The open stream, if
  any, forwards it and relays the agent's events; otherwise the replica that saw the approval
  does. From then on the broker's task id stands for the agent's task: GetTask, CancelTask and
  SubscribeToTask on it, and sends that continue it, are forwarded to the agent with the
  agent's task id, and the agent's answers name the broker's (``broker.approvals.continued``).
* Denied: ``TASK_STATE_REJECTED``; expired or voided (tree killed, agent suspended) or failed
  to forward: ``TASK_STATE_FAILED``; cancelled by the caller: ``TASK_STATE_CANCELED``; the
  status message and ``metadata["a2a-broker/approval"]`` say why.
* Other operations held by an ``approve`` rule (a CancelTask, a push config...) are synchronous:
  refused with ``APPROVAL_PENDING``, and the same call sent again with ``A2A-Broker-Approval``
  once approved goes ahead once (as LLM calls).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from broker.approvals.action import action_digest
from broker.approvals.continued import Names, continue_send, ids_of, shown, shown_event
from broker.approvals.desk import ApprovalDesk
from broker.approvals.held import (
    HELD_DECODER,
    KEPT_HEADERS,
    HeldCall,
    answered,
    context_of,
    for_agent_task,
    task_for,
)
from broker.approvals.stages import pending_error
from broker.errors import (
    ApprovalDeniedError,
    ApprovalNotUsableError,
    ApprovalPendingError,
    BrokerError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
)
from broker.protocols.a2a import approval_task as wire
from broker.protocols.a2a.operations import CANCEL_TASK, GET_TASK, SUBSCRIBE_TO_TASK
from broker.stores.approvals_base import ApprovalRecord
from broker.stores.base import TaskRoute, TaskRouteStore
from broker.types import CallNext, MediationContext, Outcome, Reply, StreamReply

log = logging.getLogger("a2a_broker.approvals")
TASK_PREFIX = "approval-"
# How often a waiting stream (or subscriber) looks at its approval.
POLL_S = 0.5
# An approved call whose caller waits on a stream is forwarded by that stream; if the stream is
# gone, the replica that saw the approval forwards it after this long.
STREAM_GRACE_S = 3.0
class A2aApprovals:
    """The A2A format of ``RequireApproval``, and the forward of approved calls."""

    def __init__(self, desk: ApprovalDesk, routes: TaskRouteStore, heartbeat_s: float) -> None:
        self.desk = desk
        self._routes = routes
        self._heartbeat_s = heartbeat_s
        # The pipeline from policy to forward, set once it is folded (broker.pipeline.a2a).
        self.resume: CallNext | None = None

    # --- ApprovalFormat ---------------------------------------------------------------------

    def action(self, ctx: MediationContext) -> tuple[str, dict[str, Any]]:
        assert ctx.target is not None and ctx.operation is not None  # noqa: S101
        where = f"{ctx.binding} {ctx.http_method} {ctx.rest_tail}?{ctx.query_string}"
        digest = action_digest(
            protocol="a2a", target=ctx.target.name, operation=ctx.operation.name,
            body=ctx.body, chain=ctx.chain, where=where,
        )  # fmt: skip
        skill = f":{ctx.skill}" if ctx.skill else ""
        fields = {
            "protocol": "a2a",
            "target": ctx.target.name,
            "operation": ctx.operation.name,
            "skill": ctx.skill,
            "tree": ctx.parent.tree if ctx.parent is not None else "",
            "summary": f"{' > '.join(ctx.chain)} asks {ctx.target.name}"
            f" for {ctx.operation.name}{skill}",
            "stream": ctx.operation.streaming and ctx.operation.sends_message,
        }
        if ctx.parent is not None:  # the hop's token cannot outlive the chain's deadline
            fields["expires_at"] = min(ctx.parent.dl, float(ctx.parent.exp))
        return digest, fields

    def call(self, ctx: MediationContext) -> bytes:
        assert ctx.target is not None and ctx.caller is not None  # noqa: S101
        return msgspec.json.encode(HeldCall(
            binding=ctx.binding, target=ctx.target.name, http_method=ctx.http_method,
            rest_tail=ctx.rest_tail, query_string=ctx.query_string,
            headers={k: v for k in KEPT_HEADERS if (v := ctx.headers.get(k))},
            body=ctx.body, caller=ctx.caller, chain=ctx.chain, parent=ctx.parent,
            context_id=ctx.reading.context_id if ctx.reading else "",
        ))  # fmt: skip

    async def held(self, ctx: MediationContext, record: ApprovalRecord) -> Outcome:
        assert ctx.operation is not None and ctx.caller is not None  # noqa: S101
        if not ctx.operation.sends_message:
            raise pending_error(record, self.desk.settings.llm_retry_after_s)
        ttl = int(record.expires_at - record.created_at + self.desk.settings.retain_s) + 1
        await self._routes.claim(TaskRoute(agent=record.target, task_id=record.id,
                                           owner=ctx.caller), ttl)
        context_id = ctx.reading.context_id if ctx.reading else ""
        snapshot = task_for(record, context_id)
        if not record.stream:
            return wire.reply(ctx.binding, ctx.jsonrpc_id, {"task": snapshot})
        events = self._waiting(ctx, record.id, context_id, forward=True)
        return StreamReply(events)

    # --- the broker-owned task's operations -------------------------------------------------

    async def task_operation(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        """GetTask / CancelTask / SubscribeToTask on a broker-owned task (ownership was
        checked by TaskScope); anything else on it is refused."""
        assert ctx.task_id is not None and ctx.operation is not None  # noqa: S101
        record = await self.desk.current(ctx.task_id)
        if record is None:
            raise TaskNotFoundError
        if record.agent_task:  # the call was forwarded: the task is the agent's now
            for_agent_task(ctx, record.agent_task)
            return shown(await call_next(ctx), await self._names(record))
        context_id = await self._context_id(record.id)
        op = ctx.operation
        if op is GET_TASK:
            return wire.reply(ctx.binding, ctx.jsonrpc_id, await self._now(record, context_id))
        if op is CANCEL_TASK:
            if record.state not in ("pending", "approved"):
                raise TaskNotCancelableError
            ended = await self.desk.end(record.id, "cancelled", "the caller cancelled")
            if ended is None or ended.state != "cancelled":
                raise TaskNotCancelableError
            return wire.reply(ctx.binding, ctx.jsonrpc_id, task_for(ended, context_id))
        if op is SUBSCRIBE_TO_TASK:
            return StreamReply(self._waiting(ctx, record.id, context_id, forward=False,
                                             call_next=call_next))
        raise PushNotificationNotSupportedError

    async def continued(self, ctx: MediationContext, approval_id: str) -> Names:
        """Point a send that continues the broker-owned task ``approval_id`` (its
        ``message.taskId``, or ``message.contextId`` for a new task in its context) at the
        agent's task and context. Refused: ``TASK_NOT_FOUND`` (not the caller's),
        ``APPROVAL_PENDING`` (not forwarded yet), ``APPROVAL_DENIED``, ``APPROVAL_NOT_USABLE``
        (expired, voided, cancelled, or forwarded with no agent task to continue)."""
        assert ctx.target is not None  # noqa: S101 - resolved earlier
        record = await self.desk.current(approval_id)
        if (record is None or record.protocol != "a2a" or record.requester != ctx.caller
                or record.target != ctx.target.name):
            raise TaskNotFoundError
        if record.agent_task:
            names = await self._names(record)
            continue_send(ctx, names)
            return names
        ctx.approval_task = approval_id
        if record.state in ("pending", "approved"):
            raise ApprovalPendingError(
                "The task awaits a human's approval; send the message again once the task has"
                " left TASK_STATE_AUTH_REQUIRED.",
                metadata={"approval_id": record.id, "expires_at": str(int(record.expires_at))},
                retry_after=self.desk.settings.llm_retry_after_s,
            )
        if record.state == "denied":
            raise ApprovalDeniedError(metadata={"approval_id": record.id, "reason": record.reason})
        raise ApprovalNotUsableError(
            "The task ended without an agent's task to continue "
            f"({record.state}{': ' + record.reason if record.reason else ''}).",
            metadata={"approval_id": record.id, "state": record.state},
        )

    async def _now(self, record: ApprovalRecord, context_id: str) -> dict[str, Any]:
        """The broker's task; once forwarded with no task of the agent's to point at (the
        agent answered with a message, or an error), that answer's ending."""
        if record.state != "used":
            return task_for(record, context_id)
        body = await self.desk.store.answer(record.id)
        if not body:
            return task_for(record, context_id)  # forwarded, the answer not in yet: WORKING
        said = answered(body)
        if said is not None and "message" in said:
            text = "The agent answered with a message (in this status)."
            done = task_for(record, context_id, text)
            done["status"] = {**done["status"], "state": "TASK_STATE_COMPLETED",
                              "message": said["message"]}
            return done
        failed = task_for(record, context_id, "The agent refused the approved call.")
        failed["status"]["state"] = "TASK_STATE_FAILED"
        return failed

    async def _names(self, record: ApprovalRecord) -> Names:
        """The broker's ids for the agent's; the context the broker showed is read (one more
        store read) only when the agent's differs from it."""
        if not record.agent_context:
            return Names(record.id, record.agent_task)
        shown_context = await self._context_id(record.id) or record.id
        return Names(record.id, record.agent_task, record.agent_context, shown_context)

    async def _context_id(self, approval_id: str) -> str:
        raw = await self.desk.store.call(approval_id)
        return HELD_DECODER.decode(raw).context_id if raw else ""

    async def _waiting(
        self,
        ctx: MediationContext,
        approval_id: str,
        context_id: str,
        *,
        forward: bool,
        call_next: CallNext | None = None,
    ) -> AsyncIterator[bytes]:
        """The stream of a held call (``forward``: it forwards the call once approved) or of a
        subscriber: the task, then its end, or the agent's events once forwarded."""
        record = await self.desk.current(approval_id)
        if record is None:
            return
        yield wire.sse_event(ctx.binding, ctx.jsonrpc_id, {"task": task_for(record, context_id)})
        quiet = 0.0
        while True:
            await asyncio.sleep(POLL_S)
            record = await self.desk.current(approval_id)
            if record is None:
                return
            if record.state == "approved" and forward:
                async for event in self._forward_events(ctx, approval_id, context_id):
                    yield event
                return
            if record.agent_task and call_next is not None and not forward:
                async for event in self._agent_events(ctx, record, call_next):
                    yield event
                return
            if record.state not in ("pending", "approved", "used"):
                update = wire.status_update(task_for(record, context_id))
                yield wire.sse_event(ctx.binding, ctx.jsonrpc_id, {"statusUpdate": update})
                return
            quiet += POLL_S
            if quiet >= self._heartbeat_s:
                quiet = 0.0
                yield b": waiting for approval\r\n\r\n"

    async def _agent_events(
        self, ctx: MediationContext, record: ApprovalRecord, call_next: CallNext
    ) -> AsyncIterator[bytes]:
        """A subscriber of a call that was forwarded meanwhile: the agent's answer if it was
        unary (its task may have ended already), else the agent's own subscription."""
        said = answered(await self.desk.store.answer(record.id) or b"")
        if said is not None:
            names = await self._names(record)
            yield shown_event(wire.sse_event(ctx.binding, ctx.jsonrpc_id, said), names)
            return
        for_agent_task(ctx, record.agent_task)
        outcome = shown(await call_next(ctx), await self._names(record))
        if isinstance(outcome, StreamReply):
            async for event in outcome.events:
                yield event

    async def _forward_events(
        self, ctx: MediationContext, approval_id: str, context_id: str
    ) -> AsyncIterator[bytes]:
        try:
            outcome = await self.forward(approval_id)
        except BrokerError:
            record = await self.desk.store.get(approval_id)
            if record is not None:
                update = wire.status_update(task_for(record, context_id))
                yield wire.sse_event(ctx.binding, ctx.jsonrpc_id, {"statusUpdate": update})
            return
        if isinstance(outcome, StreamReply):
            async for event in outcome.events:
                yield event

    # --- forwarding an approved call --------------------------------------------------------

    async def forward(self, approval_id: str) -> Outcome:
        """Forward the kept call of an approved approval through ``resume`` (which uses the
        approval up, once). A unary answer is kept for GetTask. A refusal on the way (policy
        changed, budget spent, agent gone) voids the approval and is raised."""
        assert self.resume is not None  # noqa: S101 - set when the pipeline is built
        raw = await self.desk.store.call(approval_id)
        if raw is None:
            raise TaskNotFoundError
        held = HELD_DECODER.decode(raw)
        ctx = context_of(held, approval_id)
        try:
            outcome = await self.resume(ctx)
        except BrokerError as err:
            await self.desk.end(approval_id, "voided", f"the approved call was refused: "
                                                        f"{err.reason}")
            raise
        # The context the caller was shown: its own, or the broker's id when it named none.
        shown_context = held.context_id or approval_id
        if isinstance(outcome, Reply):
            task, context = ids_of(outcome.body)
            differs = context if context != shown_context else ""
            await self.desk.store.forwarded(approval_id, ctx.task_id or task, outcome.body,
                                            differs)
            return outcome
        return _claiming(outcome, self.desk, approval_id, shown_context)

    async def forward_unwatched(self, record: ApprovalRecord) -> None:
        """``ApprovalDesk.on_approved``: forward an approved A2A call nobody waits on."""
        if record.protocol != "a2a" or record.operation not in ("SendMessage",
                                                                "SendStreamingMessage"):
            return
        if record.stream:
            await asyncio.sleep(STREAM_GRACE_S)
            now = await self.desk.store.get(record.id)
            if now is None or now.state != "approved":
                return  # the waiting stream forwarded it
        try:
            outcome = await self.forward(record.id)
        except BrokerError as err:
            log.info("approved call %s not forwarded: %s", record.id, err.reason)
            return
        if isinstance(outcome, StreamReply):  # nobody reads it: drain it to its end
            async for _ in outcome.events:
                pass


def _claiming(
    outcome: StreamReply, desk: ApprovalDesk, approval_id: str, shown_context: str
) -> StreamReply:
    """The agent's stream for the approved call, shown under the broker's ids: the agent's
    task (and context) are learnt from the first event naming them, and recorded."""

    async def events() -> AsyncIterator[bytes]:
        names: Names | None = None
        async for event in outcome.events:
            if names is None:
                task, context = ids_of(_data_of(event))
                if task:
                    differs = context if context != shown_context else ""
                    names = Names(approval_id, task, differs, shown_context)
                    await desk.store.forwarded(approval_id, task, b"", names.agent_context)
            yield event if names is None else shown_event(event, names)

    return StreamReply(events(), outcome.status, outcome.headers)


def _data_of(event: bytes) -> bytes:
    _, sep, rest = event.partition(b"data: ")
    return rest.partition(b"\r\n")[0] if sep else b""


class ApprovalTasks:
    """The A2A stage for broker-owned tasks: task-scoped operations on an ``approval-`` id
    are answered here (or pointed at the agent's task), sends continuing one are pointed at
    the agent's task; every other request passes at the cost of one string test."""

    def __init__(self, approvals: A2aApprovals) -> None:
        self._approvals = approvals

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        # The task a request acts on or continues (``ctx.task_id``, as read); a send may name
        # the broker's task as its context only.
        op, reading = ctx.operation, ctx.reading
        named = ctx.task_id or (reading.context_id if reading is not None else None)
        if op is None or not named or not named.startswith(TASK_PREFIX):
            return await call_next(ctx)
        if op.sends_message:
            names = await self._approvals.continued(ctx, named)
            return shown(await call_next(ctx), names)
        if op.task_scoped and ctx.task_id:
            return await self._approvals.task_operation(ctx, call_next)
        return await call_next(ctx)


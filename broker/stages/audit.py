"""Audit the forward: the decision is durable before the request leaves; the outcome follows.

Refusals made by earlier stages are recorded by the error boundary; this stage, just before
forwarding, records the allowed hop (with the token minted for it) and waits until the record
is durable: if the audit log cannot be written, nothing is forwarded (AUDIT_UNAVAILABLE). With
``[audit] durable_before = "reply"`` (file backend, unary calls) it waits only until the record
is written, so the fsync runs while the agent works, and holds the answer until the record is
durable (AUDIT_UNAVAILABLE instead of the answer if it cannot be). The outcome (status,
latency, digest of the answer or of the whole stream) is appended when the answer or the
stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from broker.audit_runtime import AuditRecorder, digest, digested_stream, request_fields
from broker.errors import BrokerError
from broker.types import CallNext, MediationContext, Outcome, Reply, StreamReply


class AuditForward:
    def __init__(self, recorder: AuditRecorder) -> None:
        self._recorder = recorder

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        fields = request_fields(ctx, phase="forward", status=0)
        assert ctx.operation is not None  # noqa: S101 - set by ParseRequest
        if ctx.operation.streaming:
            await self._recorder.record(fields)  # an event may be relayed at any moment
            synced = None
        else:  # with [audit] durable_before = "reply", on disk while the agent works
            synced = await self._recorder.record_staged(fields)
        try:
            outcome = await call_next(ctx)
            if synced is not None:
                await self._recorder.durable(synced)  # no answer before its decision is durable
        except BrokerError as err:
            ctx.error, ctx.audited = err, True
            self._recorder.record_soon(request_fields(ctx, phase="outcome", status=err.http_status))
            raise
        if isinstance(outcome, Reply):
            ctx.audited = True
            fields = request_fields(
                ctx, phase="outcome", status=outcome.status, response_digest=digest(outcome.body)
            )
            self._recorder.record_soon(fields)
            return outcome
        return StreamReply(self._audited(ctx, outcome), outcome.status, outcome.headers)

    def _audited(self, ctx: MediationContext, reply: StreamReply) -> AsyncIterator[bytes]:
        ctx.audited = True

        def record_outcome(answer: str) -> None:
            fields = request_fields(
                ctx, phase="outcome", status=reply.status, response_digest=answer
            )
            self._recorder.record_soon(fields)

        return digested_stream(reply.events, record_outcome)

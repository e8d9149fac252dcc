"""Audit the forward: the decision is durable before the request leaves; the outcome follows.

One stage for every protocol; what a record holds is the protocol's ``AuditFormat``.

Refusals made by earlier stages are recorded by the error boundary (``broker.stages.boundary``,
shared too, with the same ``AuditFormat``); this stage, just before
forwarding, records the allowed hop (with the token minted for it) and waits until the record
is durable: if the audit log cannot be written, nothing is forwarded (AUDIT_UNAVAILABLE). With
``[audit] durable_before = "reply"`` (file backend, unary A2A calls) it waits only until the
record is written, so the fsync runs while the agent works, and holds the answer until the
record is durable (AUDIT_UNAVAILABLE instead of the answer if it cannot be). The outcome
(status, latency, digest of the answer or of the whole stream) is appended when the answer or
the stream ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from broker.audit.recorder import AuditRecorder, digest, digested_stream, request_fields
from broker.errors import BrokerError
from broker.pipeline.stage import after_reply
from broker.types import CallContext, MediationContext, Outcome, Reply, StreamReply

C = TypeVar("C", bound=CallContext)
C_contra = TypeVar("C_contra", bound=CallContext, contravariant=True)


class AuditFormat(Protocol[C_contra]):
    """What one protocol's records hold."""

    async def decision(self, ctx: C_contra) -> dict[str, Any]:
        """The record of the allowed call, made durable before it is forwarded."""

    def outcome(self, ctx: C_contra, status: int, answer: str) -> dict[str, Any]:
        """The record of how it ended: ``status`` and ``answer``, the digest of what was
        relayed ("" when it failed)."""

    def staged(self, ctx: C_contra) -> bool:
        """May the decision become durable while the upstream works (``durable_before``)?"""

    def refusal(self, ctx: C_contra, status: int) -> dict[str, Any]:
        """The record of a refused call (``ctx.error``); ``status`` is the HTTP status the
        caller was answered with."""


class A2aAudit:
    """An A2A request's records (``broker.audit.recorder.request_fields``)."""

    # Building a record has no effect but the record (an LLM call's outcome also counts its
    # tokens): with auditing off, none need be built (``AuditForward.passes_through``).
    records_only = True

    async def decision(self, ctx: MediationContext) -> dict[str, Any]:
        return request_fields(ctx, phase="forward", status=0)

    def outcome(self, ctx: MediationContext, status: int, answer: str) -> dict[str, Any]:
        return request_fields(ctx, phase="outcome", status=status, response_digest=answer)

    def staged(self, ctx: MediationContext) -> bool:
        # A stream's first event may be relayed at any moment: its decision is durable first.
        return ctx.operation is not None and not ctx.operation.streaming

    def refusal(self, ctx: MediationContext, status: int) -> dict[str, Any]:
        # The status the caller saw: HTTP 200 for most JSON-RPC errors.
        return request_fields(ctx, phase="refused", status=status)


def records_only(audit: object) -> bool:
    """Does building ``audit``'s records have no effect besides the records themselves?"""
    return getattr(audit, "records_only", False) is True


class AuditForward(Generic[C]):
    def __init__(self, recorder: AuditRecorder, audit: AuditFormat[C] | None = None) -> None:
        self._recorder = recorder
        self._format: AuditFormat[Any] = audit if audit is not None else A2aAudit()

    @property
    def passes_through(self) -> bool:
        """With auditing off (``[audit] backend = "off"``: no trail) the records would be
        built only to be dropped: ``fold`` leaves the stage out (decision 0093), where
        building them does nothing else (the format's ``records_only``)."""
        return self._recorder.drops_records and records_only(self._format)

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[Outcome]]) -> Outcome:
        fields = await self._format.decision(ctx)
        if self._format.staged(ctx):  # with [audit] durable_before = "reply": on disk meanwhile
            synced = await self._recorder.record_staged(fields)
        else:
            await self._recorder.record(fields)
            synced = None
        try:
            outcome = await call_next(ctx)
            if synced is not None:
                await self._recorder.durable(synced)  # no answer before its decision is durable
        except BrokerError as err:
            ctx.error, ctx.audited = err, True
            after_reply(self._record_outcome, ctx, err.http_status, b"")
            raise
        ctx.audited = True
        if isinstance(outcome, Reply):
            after_reply(self._record_outcome, ctx, outcome.status, outcome.body)
            return outcome
        status = outcome.status

        def record_outcome(answer: str) -> None:
            self._recorder.record_soon(self._format.outcome(ctx, status, answer))

        events = digested_stream(outcome.events, record_outcome)
        return StreamReply(events, outcome.status, outcome.headers)

    def _record_outcome(self, ctx: C, status: int, body: bytes) -> None:
        """A unary call's outcome record (an empty ``body``: no digest), built and queued once
        the answer is on its way: nobody waits on it (decision 0106)."""
        self._recorder.record_soon(self._format.outcome(ctx, status, digest(body)))

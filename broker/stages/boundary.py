"""The outermost stage of every protocol: every refusal becomes a wire error and one audit
record, every call one log line.

Written once over ``CallContext``; each protocol brings its ends: a ``CallWire`` (the wire shape
of a refusal, and how its calls are logged) and the ``AuditFormat`` its records take
(``broker.stages.audit``, the same one its forward is audited with). A refusal is recorded here,
after its wire shape is chosen, because the record's status is the status the caller saw (for
A2A's JSON-RPC binding mostly HTTP 200).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from broker.audit.recorder import AuditRecorder
from broker.errors import AuditUnavailableError, BrokerError, BrokerInternalError
from broker.observability import tracing
from broker.observability.logs import log_fields
from broker.observability.record import observe_mediated, stream_opened
from broker.pipeline.stage import after_reply
from broker.protocols.a2a.wire import error_reply, sse_error_event
from broker.stages.audit import A2aAudit, AuditFormat, records_only
from broker.types import CallContext, MediationContext, Outcome, Reply, StreamReply

log = logging.getLogger("a2a_broker.access")
REQUEST_ID_HEADER = "a2a-broker-request-id"

C = TypeVar("C", bound=CallContext)
C_contra = TypeVar("C_contra", bound=CallContext, contravariant=True)


class CallWire(Protocol[C_contra]):
    """One protocol's ends, for the shared ``ErrorBoundary``."""

    # Names the call in the traceback line of an unexpected error.
    unexpected: str

    def refusal(self, ctx: C_contra, err: BrokerError) -> Reply:
        """``err`` in the protocol's error shape."""

    def finish(self, ctx: C_contra, outcome: Outcome) -> Outcome:
        """The outcome as it leaves the broker, its call logged (a stream's when it ends)."""


class ErrorBoundary(Generic[C]):
    """Turns BrokerErrors (and, as a last resort, anything else) into the protocol's error shape.

    Unexpected exceptions are logged with their traceback and answered as INTERNAL_ERROR with
    no internal text. Every refusal is audited (one record; if the audit log cannot take it,
    the caller still gets the refusal and the log says so); every call gets one log line.
    """

    def __init__(
        self,
        recorder: AuditRecorder,
        audit: AuditFormat[C] | None = None,
        wire: CallWire[C] | None = None,
    ) -> None:
        self._recorder = recorder
        self._audit: AuditFormat[Any] = audit if audit is not None else A2aAudit()
        self._wire: CallWire[Any] = wire if wire is not None else A2aWire()

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[Outcome]]) -> Outcome:
        tracing.begin(ctx, "call")  # first, so a refusal's record and log line name the trace
        try:
            outcome: Outcome = await call_next(ctx)
        except BrokerError as err:
            ctx.error = err
            outcome = self._wire.refusal(ctx, err)
        except Exception:
            log.exception("unexpected error %s %s", self._wire.unexpected, ctx.request_id)
            ctx.error = BrokerInternalError()
            outcome = self._wire.refusal(ctx, ctx.error)
        if ctx.error is not None and not ctx.audited:
            await self._audit_refusal(ctx, outcome.status)
        return self._wire.finish(ctx, outcome)

    async def _audit_refusal(self, ctx: C, status: int) -> None:
        if isinstance(ctx.error, AuditUnavailableError):
            return  # the log is what failed; the log line still says so
        if self._recorder.drops_records and records_only(self._audit):
            return  # auditing is off: a record built now would only be dropped
        try:
            await self._recorder.record(self._audit.refusal(ctx, status))
        except BrokerError as err:
            log.error("refusal of request %s not audited: %s", ctx.request_id, err.reason)  # noqa: TRY400


class A2aWire:
    """A2A's ends: the binding's error shape (JSON-RPC or REST), the request id header, one
    ``mediated`` log line when the answer is complete."""

    unexpected = "mediating request"

    def refusal(self, ctx: MediationContext, err: BrokerError) -> Reply:
        return error_reply(err, ctx.binding, ctx.jsonrpc_id)

    def finish(self, ctx: MediationContext, outcome: Outcome) -> Outcome:
        # The id that names this request in the log and the audit, for the caller to quote.
        headers = {**outcome.headers, REQUEST_ID_HEADER: ctx.request_id}
        if isinstance(outcome, StreamReply):
            return StreamReply(_logged(ctx, outcome), outcome.status, headers)
        log_request(ctx, outcome.status)
        return Reply(outcome.status, outcome.body, outcome.media_type, headers)


async def _logged(ctx: MediationContext, reply: StreamReply) -> AsyncIterator[bytes]:
    """Relay the stream and log it when it ends. A failure after the stream started ends it
    with one ``event: error`` frame (unless the stream sent one already) and a clean end, never
    with a cut connection (a truncated chunked body)."""
    stream_opened(ctx.binding)
    status = "completed"
    try:
        async for event in reply.events:
            yield event
    except Exception as exc:  # not cancellation: the caller is still there to be told
        status = "failed"
        if ctx.error is None:
            ctx.error = _stream_failure(ctx, exc)
            yield sse_error_event(ctx.error, ctx.binding, ctx.jsonrpc_id)
    except BaseException:
        status = "disconnected"
        raise
    finally:
        log_request(ctx, reply.status, stream_end=status)


def _stream_failure(ctx: MediationContext, exc: Exception) -> BrokerError:
    if isinstance(exc, BrokerError):
        return exc
    log.error("unexpected error in the stream of request %s", ctx.request_id, exc_info=exc)
    return BrokerInternalError()


def log_request(ctx: MediationContext, status: int, stream_end: str | None = None) -> None:
    """One structured line: caller, target, operation, status, latency (and the refusal).
    The metrics now; a unary answer's line once the answer is on its way (decision 0106)."""
    observe_mediated(ctx, status, stream_end)  # the request's metrics
    if not log.isEnabledFor(logging.INFO):
        return
    if stream_end is None:
        after_reply(_log_request, ctx, status, None)
    else:
        _log_request(ctx, status, stream_end)


def _log_request(ctx: MediationContext, status: int, stream_end: str | None) -> None:
    own: dict[str, object] = {
        "target": ctx.target_name,
        "binding": ctx.binding,
        "operation": ctx.operation.name if ctx.operation else None,
        "task_id": ctx.task_id,
        "chain": list(ctx.chain) or None,
        "tree": ctx.hop.tree if ctx.hop is not None else None,
    }
    log_call(ctx, "mediated", status, own, stream_end)


def log_call(
    ctx: CallContext,
    event: str,
    status: int,
    own: Mapping[str, object],
    stream_end: str | None = None,
) -> None:
    """The access log line of any mediated call: what every protocol logs, around ``own``,
    what this protocol adds. Callers check ``log.isEnabledFor(logging.INFO)`` first."""
    record: dict[str, object] = {
        "event": event,
        "request_id": ctx.request_id,
        "trace_id": ctx.trace_id or None,
        "caller": ctx.caller,
        **own,
        "status": status,
        "upstream_status": ctx.upstream_status,
        "latency_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
    }
    if ctx.error is not None:
        record["error"] = ctx.error.reason
        if ctx.error.detail:
            record["detail"] = ctx.error.detail
    if stream_end is not None:
        record["stream"] = stream_end
    log_fields(log, record)

"""The outermost stage: every refusal becomes a wire error, every request one log line."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping

from broker.audit.recorder import AuditRecorder, request_fields
from broker.errors import AuditUnavailableError, BrokerError, BrokerInternalError
from broker.logs import log_fields
from broker.observability import tracing
from broker.observability.record import observe_mediated, stream_opened
from broker.protocols.a2a.wire import error_reply, sse_error_event
from broker.types import CallContext, CallNext, MediationContext, Outcome, Reply, StreamReply

log = logging.getLogger("a2a_broker.access")
REQUEST_ID_HEADER = "a2a-broker-request-id"


class ErrorBoundary:
    """Turns BrokerErrors (and, as a last resort, anything else) into the binding's error shape.

    Unexpected exceptions are logged with their traceback and answered as INTERNAL_ERROR with
    no internal text. Every refusal is audited (one record); every request gets one JSON log
    line, when its answer is complete.
    """

    def __init__(self, recorder: AuditRecorder) -> None:
        self._recorder = recorder

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        tracing.begin(ctx, "a2a")  # first, so a refusal's record and log line name the trace
        try:
            outcome = await call_next(ctx)
        except BrokerError as err:
            ctx.error = err
            outcome = error_reply(err, ctx.binding, ctx.jsonrpc_id)
        except Exception:
            log.exception("unexpected error mediating request %s", ctx.request_id)
            ctx.error = BrokerInternalError()
            outcome = error_reply(ctx.error, ctx.binding, ctx.jsonrpc_id)
        if ctx.error is not None and not ctx.audited:
            await self._audit_refusal(ctx, outcome.status)
        # The id that names this request in the log and the audit, for the caller to quote.
        headers = {**outcome.headers, REQUEST_ID_HEADER: ctx.request_id}
        if isinstance(outcome, StreamReply):
            return StreamReply(_logged(ctx, outcome), outcome.status, headers)
        log_request(ctx, outcome.status)
        return Reply(outcome.status, outcome.body, outcome.media_type, headers)

    async def _audit_refusal(self, ctx: MediationContext, status: int) -> None:
        if isinstance(ctx.error, AuditUnavailableError):
            return  # the log is what failed; the log line below still says so
        try:
            await self._recorder.record(request_fields(ctx, phase="refused", status=status))
        except BrokerError as err:
            log.error("refusal of request %s not audited: %s", ctx.request_id, err.reason)  # noqa: TRY400


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
    """One structured line: caller, target, operation, status, latency (and the refusal)."""
    observe_mediated(ctx, status, stream_end)  # the request's metrics
    if not log.isEnabledFor(logging.INFO):
        return
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

"""The outermost stage: every refusal becomes a wire error, every request one log line."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import msgspec

from broker.errors import BrokerError, BrokerInternalError
from broker.types import CallNext, MediationContext, Outcome, StreamReply
from broker.wire import error_reply

log = logging.getLogger("a2a_broker.access")
_encoder = msgspec.json.Encoder()


class ErrorBoundary:
    """Turns BrokerErrors (and, as a last resort, anything else) into the binding's error shape.

    Unexpected exceptions are logged with their traceback and answered as INTERNAL_ERROR with
    no internal text. Writes one JSON log line per request, when its answer is complete.
    """

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        try:
            outcome = await call_next(ctx)
        except BrokerError as err:
            ctx.error = err
            outcome = error_reply(err, ctx.binding, ctx.jsonrpc_id)
        except Exception:
            log.exception("unexpected error mediating request %s", ctx.request_id)
            ctx.error = BrokerInternalError()
            outcome = error_reply(ctx.error, ctx.binding, ctx.jsonrpc_id)
        if isinstance(outcome, StreamReply):
            return StreamReply(_logged(ctx, outcome), outcome.status, outcome.headers)
        log_request(ctx, outcome.status)
        return outcome


async def _logged(ctx: MediationContext, reply: StreamReply) -> AsyncIterator[bytes]:
    status = "completed"
    try:
        async for event in reply.events:
            yield event
    except BaseException:
        status = "disconnected"
        raise
    finally:
        log_request(ctx, reply.status, stream_end=status)


def log_request(ctx: MediationContext, status: int, stream_end: str | None = None) -> None:
    """One structured line: caller, target, operation, status, latency (and the refusal)."""
    if not log.isEnabledFor(logging.INFO):
        return
    record: dict[str, object] = {
        "ts": round(time.time(), 3),
        "event": "mediated",
        "request_id": ctx.request_id,
        "caller": ctx.caller,
        "target": ctx.target_name,
        "binding": ctx.binding,
        "operation": ctx.operation.name if ctx.operation else None,
        "task_id": ctx.task_id,
        "chain": list(ctx.chain) or None,
        "tree": ctx.hop.tree if ctx.hop is not None else None,
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
    log.info(_encoder.encode(record).decode())

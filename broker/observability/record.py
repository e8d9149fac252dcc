"""The hooks the broker calls to record what happened: one call per request, from the place
that already sees every request's outcome (its log line), and one per store call, audit write
and breaker change. Each costs a few dictionary look-ups and memory-mapped increments.

Labelled children are cached by their label values: prometheus-client's ``labels()`` checks and
locks on every call, which would cost more than the increment itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from broker.delegation.errors import DelegationRequiredError
from broker.errors import (
    BrokerError,
    CycleDetectedError,
    FanOutConcurrentExceededError,
    FanOutTotalExceededError,
    HopLimitExceededError,
    PolicyDeniedError,
    TreeKilledError,
    TreeSizeExceededError,
)
from broker.llm.errors import LlmModelNotAllowedError
from broker.observability import metrics, tally, tracing

if TYPE_CHECKING:
    from broker.budgets.model import Usage
    from broker.llm.context import LlmContext
    from broker.mcp.context import McpContext
    from broker.types import MediationContext

NOBODY = "-"  # no verified caller, or no registered target
GUARD_REASONS = frozenset(
    e.reason
    for e in (
        HopLimitExceededError,
        FanOutConcurrentExceededError,
        FanOutTotalExceededError,
        TreeSizeExceededError,
        CycleDetectedError,
        TreeKilledError,
    )
)
POLICY_DENIALS = frozenset(
    e.reason for e in (PolicyDeniedError, LlmModelNotAllowedError, DelegationRequiredError)
)
_STREAM_OUTCOMES = {"completed": "ok", "failed": "failed", "disconnected": "disconnected"}


def _child(family: Any, cache: dict[tuple[str, ...], Any], key: tuple[str, ...]) -> Any:
    child = cache.get(key)
    if child is None:
        child = cache[key] = family.labels(*key)
    return child


_requests: dict[tuple[str, ...], Any] = {}
_latency: dict[tuple[str, ...], Any] = {}
_added: dict[tuple[str, ...], Any] = {}
_streams: dict[tuple[str, ...], Any] = {}
_policy: dict[tuple[str, ...], Any] = {}
_guards: dict[tuple[str, ...], Any] = {}
_llm_tokens: dict[tuple[str, ...], Any] = {}
_llm_cost: dict[tuple[str, ...], Any] = {}


class RequestSeen(msgspec.Struct, frozen=True):
    """One finished request, as the console's live traffic page shows it.

    A Struct, not a frozen dataclass: one is made per request, and a frozen dataclass sets
    each of its twelve fields through ``object.__setattr__`` (about 25 times the cost). It
    encodes to the same JSON object (the shared traffic store's rows)."""

    request_id: str
    caller: str
    target: str
    operation: str
    binding: str
    outcome: str
    reason: str
    status: int
    latency_s: float
    tree: str
    depth: int = 0  # hops in the chain that made the call (1: the caller originated it)
    at: float = msgspec.field(default_factory=time.time)  # Unix time of the answer


# This process's most recent requests, newest last (the console's live traffic page).
recent: deque[RequestSeen] = deque(maxlen=200)
# Who else is told of every finished request (the anomaly alerts, broker.alerts): callables
# that must return at once (they queue the request; nothing waits on a store here).
watchers: list[Callable[[RequestSeen], None]] = []


def _seen(request: RequestSeen) -> None:
    recent.append(request)
    for watcher in watchers:
        watcher(request)


def keep_recent(count: int) -> None:
    """Remember the last ``count`` requests (``[console] recent_requests``)."""
    global recent  # noqa: PLW0603 - one buffer per process, sized once at start-up
    recent = deque(recent, maxlen=count)


def outcome_of(error: BrokerError | None, status: int, upstream_status: int | None) -> str:
    """ok; refused (the broker said no before the agent saw it); failed (the broker gave up on
    an agent's answer); agent_error (the agent answered with an error status)."""
    if error is not None:
        return "refused" if upstream_status is None else "failed"
    return "agent_error" if status >= 400 else "ok"


def _reason(error: BrokerError | None) -> str:
    return error.reason if error is not None else ""


def observe_request(
    *,
    caller: str,
    target: str,
    operation: str,
    binding: str,
    outcome: str,
    error: BrokerError | None,
    total_s: float,
    added_s: float | None,
    policy_decided: bool,
) -> None:
    """Count one finished request (any binding: A2A, LLM, and later MCP)."""
    if not metrics.recording:
        return
    reason = _reason(error)
    key = (caller, target, operation, binding, outcome, reason)
    tally.add(_child(metrics.requests, _requests, key))
    tally.observe(_child(metrics.latency, _latency, (target, operation, binding)), total_s)
    if added_s is not None:
        added = _child(metrics.added_latency, _added, (operation, binding))
        tally.observe(added, max(0.0, added_s))
    if policy_decided:
        decision = "deny" if reason in POLICY_DENIALS else "allow"
        tally.add(_child(metrics.policy_decisions, _policy, (decision, operation)))
    if reason in GUARD_REASONS:
        tally.add(_child(metrics.guard_refusals, _guards, (reason,)))


def observe_mediated(ctx: MediationContext, status: int, stream_end: str | None = None) -> None:
    """The hook of the A2A request log line: called once per request, when its answer (or its
    stream) has ended."""
    total_s = time.perf_counter() - ctx.started
    caller = ctx.caller or NOBODY
    target = ctx.target.name if ctx.target is not None else NOBODY
    operation = ctx.operation.name if ctx.operation is not None else NOBODY
    if stream_end is not None:
        stream_closed(ctx.binding)
        outcome = _STREAM_OUTCOMES.get(stream_end, stream_end)
        if outcome == "ok" and ctx.error is not None:
            outcome = "failed"
        added_s = None  # a stream's length is the agent's, not the broker's
    else:
        outcome = outcome_of(ctx.error, status, ctx.upstream_status)
        waited = ctx.upstream_s
        added_s = total_s - waited if waited or ctx.upstream_status is None else None
    observe_request(
        caller=caller,
        target=target,
        operation=operation,
        binding=ctx.binding,
        outcome=outcome,
        error=ctx.error,
        total_s=total_s,
        added_s=added_s,
        policy_decided=bool(ctx.policy_version),
    )
    tree = ctx.hop.tree if ctx.hop is not None else ctx.parent.tree if ctx.parent else ""
    if ctx.span is not None:
        attributes = _span_attributes(caller, target, operation, ctx.binding, outcome, tree=tree)
        attributes["http.response.status_code"] = status
        if ctx.task_id:
            attributes["a2a_broker.task_id"] = ctx.task_id
        tracing.end(ctx, attributes, outcome, f"a2a {operation}")
    seen = (ctx.request_id, caller, target, operation, ctx.binding, outcome)
    _seen(RequestSeen(*seen, _reason(ctx.error), status, total_s, tree, len(ctx.chain)))


def observe_llm_call(ctx: LlmContext, status: int) -> None:
    """The hook of the LLM call log line (a stream: when its answer starts)."""
    total_s = time.perf_counter() - ctx.started
    caller = ctx.caller or NOBODY
    target = f"model:{ctx.request.model}" if ctx.request and ctx.route else NOBODY
    operation = f"llm:{ctx.kind}"
    outcome = outcome_of(ctx.error, status, ctx.upstream_status)
    observe_request(
        caller=caller,
        target=target,
        operation=operation,
        binding="openai",
        outcome=outcome,
        error=ctx.error,
        total_s=total_s,
        added_s=None,
        policy_decided=bool(ctx.policy_version),
    )
    tree = ctx.tree or ""
    if ctx.span is not None:
        attributes = _span_attributes(caller, target, operation, "openai", outcome, tree=tree)
        attributes["http.response.status_code"] = status
        tracing.end(ctx, attributes, outcome, operation)
    seen = (ctx.request_id, caller, target, operation, "openai", outcome)
    _seen(RequestSeen(*seen, _reason(ctx.error), status, total_s, tree, len(ctx.chain)))


def _span_attributes(
    caller: str, target: str, operation: str, binding: str, outcome: str, *, tree: str
) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "a2a_broker.caller": caller,
        "a2a_broker.target": target,
        "a2a_broker.operation": operation,
        "a2a_broker.binding": binding,
        "a2a_broker.outcome": outcome,
    }
    if tree:
        attributes["a2a_broker.tree"] = tree
    return attributes


# MCP methods a metric names; any other a caller sends is counted as "mcp:other" (labels stay
# bounded whatever callers send).
_MCP_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "tools/call", "prompts/list",
    "prompts/get", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "completion/complete", "logging/setLevel",
    "GET",  # the server's own stream (broker.mcp.listen): no message, the HTTP method
})  # fmt: skip


def mcp_operation(method: str) -> str:
    """The operation label of an MCP method: a known one, a notification, or other."""
    if method in _MCP_METHODS:
        return f"mcp:{method}"
    return "mcp:notification" if method.startswith("notifications/") else "mcp:other"


def observe_mcp_call(ctx: McpContext, status: int) -> None:
    """The hook of the MCP call log line (a stream: when it ends). The target is
    ``mcp:<server>`` only for a registered server (or ``mcp:*``, the virtual server), so a
    made-up URL adds no label value."""
    total_s = time.perf_counter() - ctx.started
    caller = ctx.caller or NOBODY
    target = ctx.target if ctx.server is not None or ctx.virtual else NOBODY
    method = ctx.message.method if ctx.message is not None else ""
    if not method and ctx.judged is not None:
        method = ctx.judged.method  # a GET: the server's own stream
    operation = mcp_operation(method)
    outcome = outcome_of(ctx.error, status, ctx.upstream_status)
    observe_request(
        caller=caller,
        target=target,
        operation=operation,
        binding="mcp",
        outcome=outcome,
        error=ctx.error,
        total_s=total_s,
        added_s=None,
        policy_decided=bool(ctx.policy_version),
    )
    seen = (ctx.request_id, caller, target, operation, "mcp", outcome)
    tree = ctx.tree or ""
    _seen(RequestSeen(*seen, _reason(ctx.error), status, total_s, tree, len(ctx.chain)))


def observe_llm_usage(model: str, usage: Usage) -> None:
    """Tokens and cost an LLM call was charged (its outcome record's figures)."""
    if not metrics.recording:
        return
    if usage.tokens_in:
        tally.add(_child(metrics.llm_tokens, _llm_tokens, (model, "in")), usage.tokens_in)
    if usage.tokens_out:
        tally.add(_child(metrics.llm_tokens, _llm_tokens, (model, "out")), usage.tokens_out)
    if usage.cost_micro:
        tally.add(_child(metrics.llm_cost, _llm_cost, (model,)), usage.cost_micro)


_detections: dict[tuple[str, ...], Any] = {}


def observe_detections(
    direction: str, found: Mapping[str, int], actions: Mapping[str, str]
) -> None:
    """Count what the data controls found in one payload or stream: per type, how many
    values and the action taken. Type names come from the detector's fixed set."""
    if not metrics.recording:
        return
    for kind, count in found.items():
        key = (direction, kind, actions.get(kind, ""))
        tally.add(_child(metrics.data_detections, _detections, key), count)


def stream_opened(binding: str) -> None:
    if metrics.recording:
        _child(metrics.open_streams, _streams, (binding,)).inc()


def stream_closed(binding: str) -> None:
    if metrics.recording:
        _child(metrics.open_streams, _streams, (binding,)).dec()

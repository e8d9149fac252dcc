"""The MCP request's own stages (the shared ones are in ``broker.stages``).

The order they run in is written in ``broker.pipeline.mcp``. MCP brings its error boundary (a
refusal is an MCP JSON-RPC error), the refusal audit, parsing (one reading, decision 0046),
resolving the server (or routing a call on the virtual server to one), opening the sealed
session, policy per server and per tool, the depth guard, the hop token and the budget of a
tool call; the forward stage is ``broker.mcp.forward``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from broker.containment.global_kill import GlobalKillSwitch
from broker.delegation.tokens import DelegationClaims, TokenMinter
from broker.errors import (
    BrokerError,
    BrokerInternalError,
    CallerSuspendedError,
    HTTPMethodNotAllowedError,
    PolicyDeniedError,
    TreeKilledError,
)
from broker.mcp.aggregate import Aggregate
from broker.mcp.context import McpCallNext, McpContext
from broker.mcp.reading import (
    HANDSHAKE_VERSIONS,
    PROTOCOL_VERSION_HEADER,
    SESSION_HEADER,
    McpOperation,
    McpReadError,
    check_accept,
    read_message,
    request_version,
)
from broker.mcp.servers import McpServerRegistry
from broker.mcp.sessions import SessionSeal, check_session_version
from broker.mcp.wire import error_body, error_reply, sse_frame
from broker.observability import tracing
from broker.observability.record import observe_mcp_call, outcome_of
from broker.policy.decision import NO_POLICY_VERSION, Decision
from broker.policy.engine import PolicyEngine
from broker.settings import DelegationSettings
from broker.stages.boundary import REQUEST_ID_HEADER
from broker.stages.boundary import log_call as shared_log_call
from broker.stages.budget import HopBudget
from broker.stages.guards import check_depth
from broker.stores.base import Stores
from broker.types import Outcome, Reply, StreamReply

log = logging.getLogger("a2a_broker.access")
_ROUTED_KINDS = frozenset({"tool", "prompt", "resource"})
_LOCAL_ON_VIRTUAL = frozenset({"initialize", "ping"})
TOOL_CALL = "tools/call"


class McpWire:
    """MCP's ends, for the shared ``broker.stages.boundary.ErrorBoundary``: every refusal an
    MCP JSON-RPC error answering the request's id (transport errors keep their HTTP status);
    a stream that fails ends with one such error event; every request one ``mcp_call`` log
    line, a stream's when it ends."""

    unexpected = "in MCP request"

    def refusal(self, ctx: McpContext, err: BrokerError) -> Reply:
        return refusal(ctx, err)

    def finish(self, ctx: McpContext, outcome: Outcome) -> Outcome:
        headers = {**outcome.headers, REQUEST_ID_HEADER: ctx.request_id}
        if isinstance(outcome, StreamReply):
            return StreamReply(_logged(ctx, outcome), outcome.status, headers)
        log_mcp_call(ctx, outcome.status)
        return Reply(outcome.status, outcome.body, outcome.media_type, headers)


def refusal(ctx: McpContext, err: BrokerError) -> Reply:
    """A POST's refusal answers its message (HTTP 200 unless a transport matter); a GET has
    no message to answer, so every refusal of one keeps the error's own HTTP status."""
    reply = error_reply(err, ctx.jsonrpc_id)
    status = err.http_status if ctx.http_method == "GET" else reply.status
    headers = dict(reply.headers)
    if isinstance(err, HTTPMethodNotAllowedError):
        headers["allow"] = "POST, DELETE" if ctx.virtual else "GET, POST, DELETE"
    return Reply(status, reply.body, headers=headers)


async def _logged(ctx: McpContext, reply: StreamReply) -> AsyncIterator[bytes]:
    status = "completed"
    try:
        async for event in reply.events:
            yield event
    except Exception as exc:  # not cancellation: the caller is still there to be told
        status = "failed"
        if ctx.error is None:
            ctx.error = exc if isinstance(exc, BrokerError) else BrokerInternalError()
            if not isinstance(exc, BrokerError):
                log.error("unexpected error in MCP stream %s", ctx.request_id, exc_info=exc)  # noqa: TRY400
            yield sse_frame(error_body(ctx.error, ctx.jsonrpc_id))
    except BaseException:
        status = "disconnected"
        raise
    finally:
        log_mcp_call(ctx, reply.status, stream_end=status)


def log_mcp_call(ctx: McpContext, status: int, stream_end: str | None = None) -> None:
    observe_mcp_call(ctx, status)  # the call's metrics
    if ctx.span is not None:
        _end_span(ctx, status, stream_end)
    if not log.isEnabledFor(logging.INFO):
        return
    judged = ctx.judged
    own: dict[str, object] = {
        "target": ctx.target,
        "binding": "mcp",
        "method": _method(ctx),
        "name": judged.name if judged is not None and judged.name else None,
        "chain": list(ctx.chain) or None,
        "tree": ctx.tree,
    }
    shared_log_call(ctx, "mcp_call", status, own, stream_end)


def _method(ctx: McpContext) -> str | None:
    """The message's method; for a GET (the server's stream, no message) ``GET``."""
    if ctx.message is not None:
        return ctx.message.method
    return ctx.judged.method if ctx.judged is not None else None


def _end_span(ctx: McpContext, status: int, stream_end: str | None) -> None:
    method = _method(ctx) or "-"
    outcome = outcome_of(ctx.error, status, ctx.upstream_status)
    if stream_end is not None and stream_end != "completed":
        outcome = "failed" if stream_end == "failed" else "disconnected"
    attributes: dict[str, str | int] = {
        "a2a_broker.caller": ctx.caller or "-",
        "a2a_broker.target": ctx.target or "-",
        "a2a_broker.operation": f"mcp:{method}",
        "a2a_broker.binding": "mcp",
        "a2a_broker.outcome": outcome,
        "http.response.status_code": status,
    }
    tracing.end(ctx, attributes, outcome, f"mcp {method}")


class ParseMcpRequest:
    """Accept, the one reading of the message (decision 0046) and its protocol version. A
    message that could be read two ways never gets further."""

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        check_accept(ctx.headers)
        body = await ctx.read_body()
        try:
            message = read_message(body, ctx.headers, ctx.raw_headers)
        except McpReadError as bad:
            ctx.reply_id = bad.request_id
            raise bad.error from None
        ctx.body, ctx.message, ctx.judged = body, message, message.operation
        if message.method == "initialize":
            ctx.version = message.protocol_version or request_version(ctx.headers)
        else:
            ctx.version = request_version(ctx.headers, message)
        return await call_next(ctx)


class ResolveMcpServer:
    """The registered server the URL names; on the virtual server, the server a named call
    routes to by its prefix, and the call as that server will see it (decision 0049)."""

    def __init__(self, registry: McpServerRegistry) -> None:
        self._registry = registry

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        if not ctx.virtual:
            ctx.server = self._registry.get(ctx.server_name)
            return await call_next(ctx)
        aggregate = Aggregate([s.name for s in self._registry.aggregated()])
        ctx.aggregate = aggregate
        judged, message = ctx.judged, ctx.message
        assert message is not None  # noqa: S101 - parsed earlier
        if judged is None or message.kind != "request" or judged.kind == "list":
            return await call_next(ctx)
        if judged.kind in _ROUTED_KINDS or judged.method not in _LOCAL_ON_VIRTUAL:
            routed = aggregate.route(judged.method, message.params or {})  # or METHOD_NOT_FOUND
            ctx.server = self._registry.get(routed.server)
            ctx.judged = McpOperation(judged.method, judged.kind, routed.name)
            ctx.routed_params = routed.params
        return await call_next(ctx)


class McpSession:
    """Open the sealed ``Mcp-Session-Id`` (decision 0047): only the caller it was issued to,
    for the server it was issued for, while that server keeps the URL and credential it had
    (decision 0070); a request in it keeps the version it negotiated."""

    def __init__(self, seal: SessionSeal, registry: McpServerRegistry) -> None:
        self._seal = seal
        self._registry = registry

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        assert ctx.caller is not None and ctx.message is not None  # noqa: S101
        if ctx.message.method == "initialize":
            return await call_next(ctx)
        token = ctx.headers.get(SESSION_HEADER)
        if ctx.virtual:
            handshake = request_version(ctx.headers) in HANDSHAKE_VERSIONS
            ctx.sessions = self._seal.open_from(ctx.caller, ctx.server_name, token,
                                                required=handshake)
        elif token:
            assert ctx.server is not None  # noqa: S101 - resolved earlier
            ctx.sessions = self._seal.open(ctx.caller, ctx.server.name, token)
        self._registry.check_sessions(ctx.sessions)
        if ctx.server is not None and (session := ctx.sessions.get(ctx.server.name)):
            if not ctx.virtual:
                check_session_version(session, ctx.headers.get(PROTOCOL_VERSION_HEADER))
            ctx.version = session.protocol_version or ctx.version
        return await call_next(ctx)


class McpJudge:
    """The policy's answer for one MCP operation on one server, with the chain in view: the
    policy stage asks it for the call, the forward stage for every listed item (decision
    0048), so a list never shows what a call would be refused. No policy: all allowed."""

    def __init__(self, engine: PolicyEngine | None) -> None:
        self.engine = engine

    def decide(self, chain: tuple[str, ...], server: str, op: McpOperation) -> Decision | None:
        if self.engine is None:
            return None
        return self.engine.decide_chain(chain, f"mcp:{server}", f"mcp:{op.action}")

    def allows(self, chain: tuple[str, ...], server: str, op: McpOperation) -> bool:
        decision = self.decide(chain, server, op)
        return decision is None or decision.allowed


class McpPolicy:
    """Policy per server and per tool, prompt or resource, for the whole chain (the origin of
    a delegated call must be allowed too: authority only narrows). On the virtual server the
    call is judged as the call to the underlying server and tool, and the servers it offers a
    caller are those the caller may ``initialize``. Lists are judged per item when answered.

    The decision is kept on the context (``ctx.decision``) for the stages after it; an
    ``approve`` rule sets ``ctx.approval_rule`` for the approval stage."""

    def __init__(self, judge: McpJudge) -> None:
        self._judge = judge

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        engine = self._judge.engine
        # Read with the decisions below, with no await between: a reload cannot slip in.
        ctx.policy_version = engine.version if engine is not None else NO_POLICY_VERSION
        if ctx.virtual and ctx.aggregate is not None:
            opening = McpOperation("initialize", "lifecycle")
            ctx.aggregate = Aggregate([s for s in ctx.aggregate.servers
                                       if self._judge.allows(ctx.chain, s, opening)])
        if ctx.server is None or ctx.judged is None:
            return await call_next(ctx)  # fanned out: judged per server and item when sent
        decision = self._judge.decide(ctx.chain, ctx.server.name, ctx.judged)
        ctx.decision = decision
        if decision is not None:
            if not decision.allowed:
                raise PolicyDeniedError(
                    metadata={"decision": decision.reason, "principal": decision.principal,
                              "server": ctx.server.name, "action": ctx.judged.action[:128]},
                    detail=f"rule {decision.rule.line}: {decision.rule.text}"
                    if decision.rule else None)
            ctx.policy_rule = decision.rule.text if decision.rule else ""
            # Allowed, but held for a human (the approval stage, later in the order).
            ctx.approval_rule = decision.approval.text if decision.approval else ""
        return await call_next(ctx)


class McpGuards:
    """The delegation guards that apply to a tool call: the chain's depth (a call made deep
    in a chain is one more hop). A tool call creates no task, so it takes no fan-out slot."""

    def __init__(self, delegation: DelegationSettings) -> None:
        self._delegation = delegation

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        if ctx.server is not None and ctx.judged is not None and ctx.judged.name:
            check_depth(self._delegation, ctx.target, ctx.chain)
        return await call_next(ctx)


class MintMcpHopToken:
    """The token the MCP server receives: audience ``mcp:<server>``, the chain grown by the
    caller, scope the method and (percent-encoded) name. The server can verify the call came
    through the broker, and an agent behind the server can extend the chain with it."""

    def __init__(self, minter: TokenMinter, default_deadline_s: float) -> None:
        self._minter = minter
        self._deadline_s = default_deadline_s

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        if ctx.server is not None:
            ctx.hop_token, ctx.hop = self.mint(ctx, ctx.server.name)
        return await call_next(ctx)

    def mint(self, ctx: McpContext, server: str) -> tuple[str, DelegationClaims]:
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        judged = ctx.judged
        scope = [f"mcp:{judged.method if judged is not None else 'message'}"]
        if judged is not None and judged.name:
            scope.append(f"mcp-name:{quote(judged.name, safe='')[:512]}")
        audience = f"mcp:{server}"
        tags = ctx.data_tags  # the data controls' (none when they are off)
        if ctx.parent is None:
            return self._minter.mint_origin(ctx.caller, audience, scope, self._deadline_s,
                                            tags=tags)
        return self._minter.mint_next(ctx.parent, ctx.caller, audience, scope, self._deadline_s,
                                      tags=tags)


class McpToolBudget:
    """A tool call is one call charged, like an A2A hop (``HopBudget.charge``: the caller's
    rate, then one atomic reserve over every budget): the caller's and its teams', the
    caller→``mcp:<server>`` edge, the task tree (a call inside an A2A chain counts in that
    chain's tree) and the tool itself (``[budgets.tools]``, ``server.tool``)."""

    def __init__(self, budget: HopBudget) -> None:
        self._budget = budget

    async def __call__(self, ctx: McpContext, call_next: McpCallNext) -> Outcome:
        judged, server = ctx.judged, ctx.server
        if server is None or judged is None or judged.method != TOOL_CALL:
            return await call_next(ctx)
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        ctx.metered = True
        return await self._budget.charge(
            ctx, call_next, caller=ctx.caller, target=ctx.target, tree=ctx.tree,
            tool=f"{server.name}.{judged.name}")



class McpStreamCheck:
    """Ends an open MCP stream when an operator stops it: the global kill switch, a suspended
    caller, or a killed task tree. The relay runs it about once a second per open stream."""

    def __init__(self, stores: Stores, kill: GlobalKillSwitch | None = None) -> None:
        self._registry = stores.registry
        self._revocations = stores.revocations
        self._kill = kill

    async def __call__(self, ctx: McpContext) -> None:
        if self._kill is not None:
            self._kill.check()
        if ctx.caller is not None:
            caller = await self._registry.get(ctx.caller)
            if caller is not None and caller.status == "suspended":
                raise CallerSuspendedError
        tree = ctx.tree
        if tree and await self._revocations.is_tree_killed(tree):
            raise TreeKilledError(metadata={"tree": tree})

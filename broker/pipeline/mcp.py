"""The order of an MCP request's stages (Streamable HTTP), and why each stands where it does.

Protocol-specific at the ends (the error boundary's MCP JSON-RPC errors, the one reading of
the message, the server or the virtual server's route, the sealed session; the hop token and
the forward at the other end), shared in the middle (``broker.stages``: authenticate, kill
switch, delegation context, the depth guard, the budget, audit), as decision 0031 planned.
``McpGateway`` is the MCP edge's behaviour, independent of the web framework.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.approvals.desk import ApprovalDesk
from broker.approvals.stages import RequireApproval
from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.budgets.scopes import ConfiguredScopes
from broker.containment.global_kill import GlobalKillSwitch, RefuseWhileKilled
from broker.datacontrols import DataControls
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.errors import BrokerError
from broker.mcp.approvals import McpApprovals
from broker.mcp.audit import McpAudit, mcp_fields
from broker.mcp.context import McpCallNext, McpContext, McpStage
from broker.mcp.datacontrols import McpDataView
from broker.mcp.forward import ForwardMcp, McpForwardParts, McpUpstream
from broker.mcp.listen import ForwardMcpListen, McpListenPolicy, ReadMcpListen
from broker.mcp.reading import SESSION_HEADER
from broker.mcp.servers import McpServer, McpServerRegistry, upstream_headers
from broker.mcp.sessions import CursorSeal, Sealer, SessionSeal, UpstreamSession
from broker.mcp.stages import (
    McpGuards,
    McpJudge,
    McpPolicy,
    McpSession,
    McpStreamCheck,
    McpToolBudget,
    McpWire,
    MintMcpHopToken,
    ParseMcpRequest,
    ResolveMcpServer,
    refusal,
)
from broker.mcp.virtual import VirtualServer
from broker.observability.tracing import traced
from broker.outbound.transport import Transport
from broker.pipeline.stage import fold
from broker.policy.engine import PolicyEngine
from broker.policy.roles import AgentRoles
from broker.settings import Settings
from broker.stages.audit import AuditForward
from broker.stages.authenticate import Authenticate
from broker.stages.boundary import ErrorBoundary
from broker.stages.budget import HopBudget
from broker.stages.datacontrols import ScanAnswer, ScanRequest
from broker.stages.delegation import DelegationContext
from broker.stores.base import Stores
from broker.types import Outcome, Reply


@dataclass(frozen=True, slots=True)
class McpParts:
    """What the MCP pipeline is built from: the shared parts the composition root built once
    for the other pipelines, the registered servers and the key that seals sessions."""

    settings: Settings
    stores: Stores
    audit: AuditRecorder
    authenticate: Authenticate
    policy: PolicyEngine | None
    minter: TokenMinter
    verifier: TokenVerifier
    roles: AgentRoles
    budget_scopes: ConfiguredScopes
    kill: GlobalKillSwitch
    transport: Transport
    registry: McpServerRegistry
    sealer: Sealer
    tasks: BackgroundTasks | None = None  # what outlives a call runs here (the runtime's)
    approvals: ApprovalDesk | None = None  # None: no approve rule can hold a call
    datacontrols: DataControls | None = None  # [datacontrols] enabled: their two stages


def _upstream(parts: McpParts, judge: McpJudge, mint: MintMcpHopToken) -> McpUpstream:
    settings, mcp = parts.settings, parts.settings.mcp
    return McpUpstream(McpForwardParts(
        parts.transport, SessionSeal(parts.sealer, mcp.session_ttl_s),
        CursorSeal(parts.sealer, mcp.cursor_ttl_s), judge, mint,
        mcp, settings.limits.sse_max_duration_s, settings.limits.sse_heartbeat_s,
        # Open streams end within about a second of the kill switch, a suspension or a
        # tree kill, as A2A streams do.
        McpStreamCheck(parts.stores, parts.kill)))


def mcp_stages(parts: McpParts) -> list[McpStage]:
    """The order of an MCP request, and why each stage stands where it does."""
    settings, stores, mcp = parts.settings, parts.stores, parts.settings.mcp
    data = parts.datacontrols
    sessions = SessionSeal(parts.sealer, mcp.session_ttl_s)
    judge = McpJudge(parts.policy)
    mint = MintMcpHopToken(parts.minter, settings.delegation.default_deadline_s)
    upstream = _upstream(parts, judge, mint)
    return [
        # Outermost: every refusal an MCP JSON-RPC error answering the request's id (transport
        # errors keep their HTTP status) and one audit record, a failed stream one error
        # event, every request one log line (the same boundary as A2A's, with MCP's ends).
        ErrorBoundary[McpContext](parts.audit, McpAudit(), McpWire()),
        # Before the body is read: an unauthenticated request costs one hash and one store read.
        parts.authenticate,
        # The global kill switch (a flag in memory), once the caller is known.
        RefuseWhileKilled(parts.kill),
        # Accept, then the one reading: a message two parsers could read apart (duplicate
        # keys, a float id, headers that disagree with the body) is refused before anything is
        # looked up for it, and what policy judges is exactly what the server will act on.
        ParseMcpRequest(),
        # The server must be registered; on the virtual server a call is routed by its prefix
        # here, so everything after judges it as the call to that server and tool.
        ResolveMcpServer(parts.registry),
        # The sealed session opens only for its caller and server, before the delegation
        # token is verified (no crypto for a stolen session id beyond one AES-GCM open).
        McpSession(sessions, parts.registry),
        # The chain comes only from a token the broker minted for this caller: a tool call
        # made while working on an A2A task is judged with that task's chain and tree.
        DelegationContext(parts.verifier, stores.revocations),
        # Policy per server and per tool, before any counter or budget moves: a denied call
        # costs nothing. Lists are judged item by item with the same judge when answered.
        McpPolicy(judge),
        # The chain's depth, as for an A2A hop (a tool call creates no task: no fan-out slot).
        McpGuards(settings.delegation),
        # Data controls on the tool's arguments, before approval, the token and the budget (a
        # call refused for its data spends nothing; an approval covers what would be sent;
        # the token carries the work's tags): the server sees only what the rules let by.
        *([ScanRequest(data, McpDataView())] if data else []),
        # Human approval (an "approve" rule), once every check before it has passed and
        # before the budget (nothing is reserved while a person decides): the call is refused
        # APPROVAL_PENDING and goes ahead, once, when sent again under the approval. A call
        # with no approve rule passes at the cost of an attribute test.
        *_approval_stages(parts.approvals),
        # Mint the server's hop token; only the budget can still refuse, and then the token is
        # never sent (a token costs no store write; the budget charges the tree it names).
        mint,
        # A tool call is one call charged, after policy and guards (a refused call spends
        # nothing): the caller, its teams, the edge to the server, the tree, the tool.
        McpToolBudget(HopBudget(stores, settings.budgets, parts.budget_scopes, parts.roles,
                                parts.tasks)),
        # Every decision is made: record it (arguments as digests only) durably before
        # anything leaves, and the outcome when the answer or the stream ends.
        AuditForward[McpContext](parts.audit, McpAudit()),
        # The answer's data (a tool's result, each event of a stream), inside the audit.
        *([ScanAnswer(data, McpDataView())] if data else []),
        # Innermost: the broker's credential and the hop token, never the caller's; SSE relayed
        # event by event, lists filtered, sessions and cursors sealed.
        ForwardMcp(upstream, VirtualServer(upstream, parts.registry)),
    ]


def mcp_listen_stages(parts: McpParts) -> list[McpStage]:
    """The order of a ``GET`` (the server's own stream, decision 0063): the same ends and
    shared stages as a request, with no message to read, no budget (a stream is not a call)
    and no approval (nothing is acted on); the data controls see every message it carries."""
    settings, data = parts.settings, parts.datacontrols
    judge = McpJudge(parts.policy)
    mint = MintMcpHopToken(parts.minter, settings.delegation.default_deadline_s)
    return [
        # Every refusal one audit record; the stream's failure one error event.
        ErrorBoundary[McpContext](parts.audit, McpAudit(), McpWire()),
        parts.authenticate,
        RefuseWhileKilled(parts.kill),
        # The server, and the caller's sealed session with it (required: a stream belongs to
        # a session), before the delegation token is verified, as for a request.
        ReadMcpListen(parts.registry, SessionSeal(parts.sealer, settings.mcp.session_ttl_s)),
        DelegationContext(parts.verifier, parts.stores.revocations),
        # The chain must still be allowed to be in a session with the server.
        McpListenPolicy(judge),
        mint,
        # The decision durable before the stream opens; the outcome when it ends.
        AuditForward[McpContext](parts.audit, McpAudit()),
        # Each message of the stream, as for a request's streamed answer.
        *([ScanAnswer(data, McpDataView())] if data else []),
        ForwardMcpListen(_upstream(parts, judge, mint)),
    ]


def _approval_stages(desk: ApprovalDesk | None) -> list[McpStage]:
    if desk is None:
        return []
    return [RequireApproval[McpContext](desk, McpApprovals(desk.settings.llm_retry_after_s))]


class McpGateway:
    """The MCP edge's behaviour, independent of the web framework: the pipeline, folded once,
    and the end of a session (``DELETE``)."""

    def __init__(self, parts: McpParts) -> None:
        self.call: McpCallNext = fold(traced(mcp_stages(parts)))
        # GET: the server's own stream in the caller's session.
        self.listen: McpCallNext = fold(traced(mcp_listen_stages(parts)))
        self._parts = parts
        self._sessions = SessionSeal(parts.sealer, parts.settings.mcp.session_ttl_s)

    async def end_session(self, ctx: McpContext) -> Outcome:
        """``DELETE`` of a session the caller holds: each server's side is ended with the
        broker's credential; the broker keeps nothing to forget (decision 0047). The end is
        an audit event; a refusal (no credential, not this caller's session) one record."""
        try:
            ctx.caller = await self._parts.authenticate.identify(ctx.headers.get("authorization"))
            token = ctx.headers.get(SESSION_HEADER, "")
            upstreams = self._sessions.open(ctx.caller, ctx.server_name, token)
        except BrokerError as err:
            ctx.error = err
            reply = refusal(ctx, err)
            await self._parts.audit.record(mcp_fields(ctx, phase="refused", status=reply.status))
            return reply
        for name, session in upstreams.items():
            server = self._parts.registry.find(name)
            # Not a server removed or changed since: its side ended with its old URL.
            if session.session_id and server is not None and server.epoch == session.epoch:
                await self._end_upstream(server, session)
        await self._parts.audit.event("mcp.session", ctx.caller, action="end",
                                      target=ctx.target, request_id=ctx.request_id)
        return Reply(204, b"")

    async def _end_upstream(self, server: McpServer, session: UpstreamSession) -> None:
        headers = upstream_headers(server, (), protocol_version=session.protocol_version,
                                   session=session)
        try:
            answer = await self._parts.transport.send(
                "DELETE", server.url, headers=headers, body=None, stream=False)
            answer.close()
        except BrokerError:
            return  # the server's session expires by itself

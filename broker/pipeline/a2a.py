"""The order of an A2A request's stages, and why each stands where it does.

Protocol-specific at the ends (the error boundary's wire shape, parsing and reading the
parameters, resolving the target agent; minting its token and forwarding at the other end),
shared in the middle (``broker.stages``: authenticate, delegation context, kill switch,
policy, containment, guards, budget, audit).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.approvals.a2a import A2aApprovals, ApprovalTasks
from broker.approvals.stages import RequireApproval, TreeBudgetThreshold
from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.budgets.model import ONE_CALL, Scope, Usage
from broker.budgets.scopes import ConfiguredScopes
from broker.containment.global_kill import GlobalKillSwitch, RefuseWhileKilled
from broker.containment.stages import AgentContainment
from broker.containment.tree_kill import LiveStreamCheck
from broker.datacontrols import DataControls
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.late_writes import LateWrites
from broker.outbound.transport import Transport
from broker.policy.engine import PolicyEngine
from broker.policy.roles import AgentRoles
from broker.protocols.a2a.task_pages import PageTokens
from broker.settings import Settings
from broker.stages.audit import A2aAudit, AuditForward
from broker.stages.authenticate import Authenticate
from broker.stages.boundary import A2aWire, ErrorBoundary
from broker.stages.budget import HopBudget
from broker.stages.datacontrols import ScanAnswer, ScanRequest
from broker.stages.datacontrols_a2a import A2aDataView
from broker.stages.delegation import DelegationContext
from broker.stages.forward import Forward
from broker.stages.guards import CascadeGuards
from broker.stages.mint import MintHopToken
from broker.stages.parse import ParseRequest, ReadParams
from broker.stages.policy import ChainPolicy
from broker.stages.push_support import PushSupport
from broker.stages.resolve import ResolveTarget
from broker.stages.responses import ResponseInspector
from broker.stages.task_scope import PushUrlCheck, TaskScope
from broker.stores.base import Stores
from broker.types import MediationContext, Stage


@dataclass(frozen=True, slots=True)
class A2aParts:
    """What the A2A pipeline is built from, each built once by the composition root."""

    settings: Settings
    stores: Stores
    audit: AuditRecorder
    authenticate: Authenticate
    policy: PolicyEngine | None
    minter: TokenMinter
    verifier: TokenVerifier
    roles: AgentRoles
    budget_scopes: ConfiguredScopes
    late_writes: LateWrites
    kill: GlobalKillSwitch
    transport: Transport
    inspector: ResponseInspector
    pages: PageTokens
    push_url_allowed: PushUrlCheck
    tasks: BackgroundTasks | None = None  # what outlives a call runs here (the runtime's)
    datacontrols: DataControls | None = None  # [datacontrols] enabled: their two stages
    approvals: A2aApprovals | None = None  # None: no approve rule can hold a call


def _sends(ctx: MediationContext) -> bool:
    return ctx.operation is not None and ctx.operation.sends_message


def a2a_stages(parts: A2aParts) -> list[Stage]:
    """The order of mediation, and why each stage stands where it does."""
    settings, stores = parts.settings, parts.stores
    data = parts.datacontrols
    return [
        # Outermost, so every refusal from any stage gets the binding's error shape and one
        # audit record, and every request exactly one log line, streams included.
        ErrorBoundary[MediationContext](parts.audit, A2aAudit(), A2aWire()),
        # Before the body is read or anything is looked up for the caller: an unauthenticated
        # request costs one hash and one store read.
        parts.authenticate,
        # Limits before decoding; only the envelope is decoded. Needs no store.
        ParseRequest(settings.limits),
        # The global kill switch (a flag in memory) once the operation is known, so a
        # CancelTask, which stops work, still passes; before anything is looked up.
        RefuseWhileKilled(parts.kill),
        # The target must exist, be active and offer the binding before anything else is asked.
        ResolveTarget(stores.registry),
        # The spec's answer for push configs on an agent without push, before the parameters
        # are judged, so it reveals nothing about the task or URL they name.
        PushSupport(),
        # The parameters, read exactly as the agent will read them (one reading, 0015).
        ReadParams(settings.limits),
        # The chain comes only from a token the broker minted for this caller, so the policy
        # below judges what really happened, not what a body or header claims.
        # A send's revocation check rides in the guards' round trip (decision 0075): nothing
        # in between touches a store or lets anything leave.
        DelegationContext(parts.verifier, stores.revocations, defer=_sends),
        # Policy before any counter or budget moves, so a denied hop costs nothing.
        ChainPolicy(parts.policy, settings.delegation),
        # A failing agent's open circuit, or its full bulkhead, refuses at once: after policy
        # (a denied hop learns nothing of the agent), before any counter, token or budget.
        AgentContainment(settings.containment, tasks=parts.tasks),
        # Depth, fan-out and tree size: after policy (a refused hop counts nothing), before the
        # token is minted, so a refused child never exists.
        CascadeGuards(
            stores.delegation_counters,
            settings.delegation,
            settings.limits,
            parts.late_writes,
            parts.tasks,
            revocations=stores.revocations,
            # The stages up to the budget run while the slot is taken, so its reserve shares
            # the round trip (decision 0075): only where those stages can only refuse, check
            # ownership and mint, so a hop the slot refuses is recorded as before; not where a
            # person may be asked (approvals) or the data controls scan (and redact) the body.
            ahead=parts.approvals is None and data is None,
        ),
        # Ownership of task-scoped calls and push URL egress checks, before anything leaves.
        TaskScope(stores.task_routes, parts.push_url_allowed, parts.pages),
        # Data controls on what the caller sends: after policy and the guards (a refused hop
        # scans nothing), before the token (its tags include this hop's) and the budget (a
        # hop refused for its data spends nothing).
        *([ScanRequest(data, A2aDataView())] if data else []),
        # Human approval, once every automatic check has passed (policy, containment, guards,
        # ownership: a call a machine would refuse never waits for a person) and before the
        # token and the budget (nothing is reserved while a person decides; the approved call
        # is forwarded through these stages again, docs/approvals.md). Tasks the broker owns
        # while a call waits are answered first; a hop with no approve rule passes at the cost
        # of an attribute test, no store round trip.
        *_approval_stages(parts),
        # Mint the target's token, scoped to what was allowed. Only the budget below can still
        # refuse, and then the token is never sent: a token costs no store write, and the
        # budget wants the hop's tree, which the token names.
        MintHopToken(parts.minter, settings.delegation.default_deadline_s),
        # Rate limits and budgets last among the checks (after policy and guards, so a refused
        # hop spends nothing), once the tree is known: one atomic reserve for every budget.
        HopBudget(stores, settings.budgets, parts.budget_scopes, parts.roles, parts.tasks),
        # Every decision is made: record it (with the token) durably before anything leaves,
        # and the outcome when the answer ends. No audit log, no forwarding.
        AuditForward[MediationContext](parts.audit, A2aAudit()),
        # The answer's data, inside the audit: the outcome record says what the caller got.
        *([ScanAnswer(data, A2aDataView())] if data else []),
        # Innermost: relays the caller's bytes and records the routes of new tasks.
        Forward(
            parts.transport,
            settings.limits,
            settings.upstream_credentials,
            parts.inspector,
            # Open streams end within about a second of a suspension, a tree kill or the
            # global kill switch.
            recheck=LiveStreamCheck(stores, parts.kill),
        ),
    ]


def _approval_stages(parts: A2aParts) -> list[Stage]:
    approvals = parts.approvals
    if approvals is None:
        return []
    scopes = parts.budget_scopes

    async def tree_scopes(ctx: MediationContext, tree: str) -> tuple[Scope, ...]:
        assert ctx.caller is not None and ctx.target is not None  # noqa: S101
        await scopes.refresh()
        return scopes.for_call(ctx.caller, (), tree, ctx.target.name)

    def one_send(ctx: MediationContext) -> Usage | None:
        return ONE_CALL if ctx.operation is not None and ctx.operation.sends_message else None

    return [
        ApprovalTasks(approvals),
        TreeBudgetThreshold[MediationContext](
            parts.stores.budgets, approvals.desk.settings.tree_budget_percent, one_send,
            tree_scopes,
        ),
        RequireApproval[MediationContext](approvals.desk, approvals),
    ]


def resume_stages(stages: list[Stage]) -> list[Stage]:
    """The stages an approved call is forwarded through: all but the error boundary (the
    caller's answer was given already), authentication and the delegation context (the call
    was authenticated and its chain verified when it was received; the kept call carries
    them). Policy, containment, guards, ownership and budget are asked again, a fresh hop
    token is minted, and the approval stage uses the approval up, once."""
    skipped = (ErrorBoundary, Authenticate, DelegationContext)
    return [stage for stage in stages if not isinstance(stage, skipped)]

"""The order of an LLM call's stages (the OpenAI-compatible endpoint), and why.

The stages in the middle are the ones every protocol shares (``broker.stages``); the LLM's own
parse its request at the start, meter its tokens, and forward it to the provider at the end.
``LlmGateway`` is the endpoint's behaviour, independent of the web framework: this pipeline,
folded once, and the model listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from broker.approvals.desk import ApprovalDesk
from broker.approvals.stages import (
    CostOverThreshold,
    LlmApprovals,
    RequireApproval,
    TreeBudgetThreshold,
)
from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.budgets.model import Scope, Usage
from broker.containment.global_kill import GlobalKillSwitch, RefuseWhileKilled
from broker.containment.stages import ProviderBreaker
from broker.datacontrols import DataControls
from broker.delegation.tokens import TokenVerifier
from broker.errors import BrokerError
from broker.llm.audit import LlmAudit
from broker.llm.context import LlmCallNext, LlmContext, LlmStage, fold_llm
from broker.llm.datacontrols import LlmDataView
from broker.llm.forward import ForwardToProvider
from broker.llm.metering import BudgetScopes, MeterBudget
from broker.llm.stages import (
    ACTIONS,
    AgentRateLimit,
    LlmWire,
    ModelPolicy,
    ParseLlmRequest,
)
from broker.observability.tracing import traced
from broker.outbound.transport import Transport
from broker.policy.engine import PolicyEngine
from broker.policy.roles import AgentRoles
from broker.protocols.llm.catalog import ModelCatalog
from broker.protocols.llm.wire import openai_error_reply
from broker.settings import LimitSettings
from broker.settings_containment import ContainmentSettings
from broker.settings_llm import LlmSettings
from broker.stages.audit import AuditForward
from broker.stages.authenticate import Authenticate
from broker.stages.boundary import ErrorBoundary
from broker.stages.datacontrols import ScanAnswer, ScanRequest
from broker.stages.delegation import DelegationContext
from broker.stores.base import Revocations
from broker.stores.budget_base import BudgetLedger, RateLimiter
from broker.types import Reply

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class LlmParts:
    """What the LLM pipeline is built from (all shared with the A2A pipeline)."""

    llm: LlmSettings
    limits: LimitSettings
    authenticate: Authenticate
    policy: PolicyEngine | None
    verifier: TokenVerifier
    revocations: Revocations
    client: Transport
    ledger: BudgetLedger
    limiter: RateLimiter
    scopes: BudgetScopes
    audit: AuditRecorder
    containment: ContainmentSettings = field(default_factory=ContainmentSettings)
    kill: GlobalKillSwitch | None = None
    roles: AgentRoles | None = None  # built from ``policy`` when not given
    tasks: BackgroundTasks | None = None  # what outlives a call runs here (the runtime's)
    datacontrols: DataControls | None = None  # [datacontrols] enabled: their two stages
    approvals: ApprovalDesk | None = None  # None: no approve rule can hold a call


def llm_stages(parts: LlmParts, catalog: ModelCatalog) -> list[LlmStage]:
    """The order of an LLM call, and why each stage stands where it does."""
    roles = parts.roles if parts.roles is not None else AgentRoles(parts.policy)
    data = parts.datacontrols
    return [
        # Outermost: every refusal from any stage becomes an OpenAI-shaped error and one audit
        # record, every call one log line (the same boundary as A2A's, with the LLM's ends).
        ErrorBoundary[LlmContext](parts.audit, LlmAudit(), LlmWire()),
        # Before the body is read: an unauthenticated call costs one hash and one store read.
        parts.authenticate,
        # The global kill switch, once the caller is known (its refusal names who tried).
        *([RefuseWhileKilled(parts.kill)] if parts.kill is not None else []),
        # Size and depth limits before decoding; only the envelope is decoded. Unknown models
        # are refused here, before any store is asked.
        ParseLlmRequest(parts.limits, parts.llm, catalog),
        # The chain comes only from a token the broker minted for this caller; it decides the
        # tree the call is charged to, and the policy below judges the whole chain.
        DelegationContext(parts.verifier, parts.revocations),
        # Policy before the rate limit and the budget, so a denied call spends nothing.
        ModelPolicy(parts.policy),
        # The rate limit before the budget: a refused call reserves nothing.
        AgentRateLimit(parts.limiter, parts.llm),
        # A provider that keeps failing is refused at once, before a budget is reserved.
        ProviderBreaker(parts.containment),
        # Data controls on the prompt, before the budget (a call refused for its data spends
        # nothing) and before anything leaves: the provider sees only what the rules let by.
        *([ScanRequest(data, LlmDataView())] if data else []),
        # Reserve the worst case before anything leaves (fail closed); settle or release after.
        MeterBudget(parts.ledger, parts.scopes, roles, parts.llm, parts.tasks),
        # Human approval after every automatic check (policy, rate, breaker, budget: a call
        # the machine refuses never waits for a person), once the worst-case cost is known
        # (a costly call may need approval). A held call is refused with APPROVAL_PENDING,
        # which gives the reservation back; a call without an approve rule passes at the
        # cost of an attribute test.
        *_approval_stages(parts),
        # Every decision is made: record it durably before the provider is called.
        AuditForward[LlmContext](parts.audit, LlmAudit()),
        # The completion's data, inside the audit, with the call's pseudonyms restored.
        *([ScanAnswer(data, LlmDataView())] if data else []),
        # Innermost: the provider gets the broker's key and the caller's bytes.
        ForwardToProvider(parts.client, parts.limits, parts.llm),
    ]


def _approval_stages(parts: LlmParts) -> list[LlmStage]:
    desk = parts.approvals
    if desk is None:
        return []

    async def tree_scopes(ctx: LlmContext, tree: str) -> tuple[Scope, ...]:
        assert ctx.request is not None  # noqa: S101 - parsed earlier
        return await parts.scopes.for_llm_call(
            ctx.caller or "", (), tree, f"model:{ctx.request.model}"
        )

    def reserved(_: LlmContext) -> Usage:
        return Usage()  # the worst case is reserved already (MeterBudget)

    return [
        CostOverThreshold(desk.settings.llm_cost_over_usd),
        TreeBudgetThreshold[LlmContext](
            parts.ledger, desk.settings.tree_budget_percent, reserved, tree_scopes
        ),
        RequireApproval[LlmContext](desk, LlmApprovals(desk.settings.llm_retry_after_s)),
    ]


class LlmGateway:
    """The OpenAI-compatible endpoint's behaviour, independent of the web framework."""

    def __init__(self, parts: LlmParts) -> None:
        self.catalog = ModelCatalog(parts.llm)
        self.call: LlmCallNext = fold_llm(traced(llm_stages(parts, self.catalog)))
        self._parts = parts

    async def models(self, authorization: str | None) -> Reply:
        """``GET /v1/models``: the models this caller may use, as OpenAI lists them."""
        try:
            caller = await self._parts.authenticate.identify(authorization)
        except BrokerError as err:
            return openai_error_reply(err)
        data = [
            {"id": r.model, "object": "model", "created": 0, "owned_by": r.provider_name}
            for r in self.catalog.models()
            if self._may_use(caller, r.model)
        ]
        return Reply(200, _encoder.encode({"object": "list", "data": data}))

    def _may_use(self, caller: str, model: str) -> bool:
        engine = self._parts.policy
        if engine is None:
            return True
        return engine.decide_chain((caller,), f"model:{model}", ACTIONS["chat"]).allowed

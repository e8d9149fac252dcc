"""Chain policy: every hop is decided with the whole chain in view (Casbin, cached).

A caller without a delegation context must be allowed to originate work (asked first, so an
agent calling itself without a token hears that, not CYCLE_DETECTED). A hop is allowed only
if the caller may do it and so may the chain's origin (unless the caller holds a ``delegate``
rule): authority only narrows along a chain. A target already in the chain is a cycle, refused
unless a ``reenter`` rule allows it, and then only ``max_reentries`` times.
"""

from __future__ import annotations

from broker.delegation.errors import DelegationRequiredError
from broker.errors import CycleDetectedError, PolicyDeniedError
from broker.policy.decision import NO_POLICY_VERSION, Decision, operation_action
from broker.policy.engine import PolicyEngine
from broker.settings import DelegationSettings
from broker.types import CallNext, MediationContext, Outcome


class ChainPolicy:
    """``engine`` None means no policy is configured: every hop is allowed, cycles are not."""

    def __init__(self, engine: PolicyEngine | None, delegation: DelegationSettings) -> None:
        self._engine = engine
        self._delegation = delegation

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.caller is not None and ctx.target is not None  # noqa: S101 - earlier stages
        assert ctx.operation is not None  # noqa: S101
        # Read with the decisions below, with no await between: a reload cannot slip in.
        ctx.policy_version = self._engine.version if self._engine else NO_POLICY_VERSION
        # Origination before the cycle check: without a delegation context the "chain" is only
        # the caller itself, so an agent calling itself would otherwise read as a loop. What it
        # lacks is the context (or the right to start work), and that is what it must be told.
        if self._engine is not None and ctx.parent is None:
            _require(self._engine.may_originate(ctx.caller), DelegationRequiredError)
        if ctx.operation.sends_message:
            self._check_cycle(ctx.chain, ctx.target.name)
        if self._engine is not None:
            act = operation_action(ctx.operation.name, ctx.skill)
            decision = self._engine.decide_chain(ctx.chain, ctx.target.name, act)
            _require(decision, PolicyDeniedError)
            ctx.policy_rule = decision.rule.text if decision.rule else ""
            # Allowed, but held for a human (the approval stage, later in the order).
            ctx.approval_rule = decision.approval.text if decision.approval else ""
        return await call_next(ctx)

    def _check_cycle(self, chain: tuple[str, ...], target: str) -> None:
        seen = chain.count(target)
        if not seen:
            return
        allowed = self._delegation.limits_for(target).max_reentries
        reentry = self._engine is not None and self._engine.may_reenter(chain[-1], target).allowed
        if not reentry or seen > allowed:
            raise CycleDetectedError(metadata={"agent": target, "chain": ">".join(chain)})


def _require(decision: Decision, error: type[PolicyDeniedError | DelegationRequiredError]) -> None:
    if decision.allowed:
        return
    raise error(
        metadata={"decision": decision.reason, "principal": decision.principal},
        detail=f"rule {decision.rule.line}: {decision.rule.text}" if decision.rule else None,
    )

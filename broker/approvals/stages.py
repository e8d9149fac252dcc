"""The approval stage, written once over ``CallContext``, and the LLM's way of holding a call.

The policy stage sets ``ctx.approval_rule`` when an ``approve`` rule matched; a call without
one passes at the cost of one attribute test (no store round trip). A held call becomes a
pending approval bound to the digest of its exact action, and the protocol's format answers
the caller (A2A: a task the broker owns, ``broker.approvals.a2a``; LLM: ``APPROVAL_PENDING``
with the approval id). A call that comes back under an approval (the broker's own forward of
an approved A2A call, or a caller's retry with ``A2A-Broker-Approval``) goes ahead only if the
approval is approved, unused, unexpired and for the same digest, and uses it up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from broker.approvals.action import action_digest
from broker.approvals.desk import ApprovalDesk
from broker.budgets.model import Scope, Usage
from broker.errors import ApprovalDeniedError, ApprovalPendingError
from broker.llm.context import LlmContext
from broker.stores.approvals_base import ApprovalRecord
from broker.stores.budget_base import BudgetLedger
from broker.types import CallContext, Outcome

APPROVAL_HEADER = "a2a-broker-approval"  # the approval a caller's retry goes ahead under
C = TypeVar("C", bound=CallContext)
C_contra = TypeVar("C_contra", bound=CallContext, contravariant=True)


class ApprovalFormat(Protocol[C_contra]):
    """What differs per protocol: what the action is, what is kept of the call, and how the
    caller is answered while it waits."""

    def action(self, ctx: C_contra) -> tuple[str, dict[str, Any]]:
        """The action's digest, and the record's fields (target, operation, summary, ...)."""

    def call(self, ctx: C_contra) -> bytes:
        """What the approval keeps of the call (to forward it once approved)."""

    async def held(self, ctx: C_contra, record: ApprovalRecord) -> Outcome:
        """The answer while the call waits (or raise the refusal that says so)."""


class RequireApproval(Generic[C]):
    def __init__(self, desk: ApprovalDesk, fmt: ApprovalFormat[C]) -> None:
        self._desk = desk
        self._format = fmt

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[Outcome]]) -> Outcome:
        # A resumed call (``approval_id`` set) always uses its approval up, even if the policy
        # no longer asks for one: an approval is never left to be used a second time.
        if not ctx.approval_rule and not ctx.approval_id:
            return await call_next(ctx)
        digest, fields = self._format.action(ctx)
        presented = ctx.approval_id or ctx.headers.get(APPROVAL_HEADER, "").strip()
        if presented:
            await self._check(presented)
            await self._desk.consume(presented, digest)  # once, for this very action
            ctx.approval_id = presented
            return await call_next(ctx)
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        record = await self._desk.request(
            self._format.call(ctx),
            digest=digest,
            requester=ctx.caller,
            chain=ctx.chain or (ctx.caller,),
            rule=ctx.approval_rule,
            **fields,
        )
        return await self._format.held(ctx, record)

    async def _check(self, approval_id: str) -> None:
        """A retry before the decision hears it is still pending; after a deny, that it was
        denied. Anything else is for ``consume`` to refuse."""
        record = await self._desk.current(approval_id)
        if record is None:
            return
        if record.state == "pending":
            raise pending_error(record, self._desk.settings.llm_retry_after_s)
        if record.state == "denied":
            raise ApprovalDeniedError(metadata={"approval_id": record.id, "reason": record.reason})


def pending_error(record: ApprovalRecord, retry_after_s: float) -> ApprovalPendingError:
    return ApprovalPendingError(
        metadata={"approval_id": record.id, "expires_at": str(int(record.expires_at))},
        retry_after=retry_after_s,
    )


class LlmApprovals:
    """An LLM call is synchronous HTTP: it cannot wait minutes for a person. It is refused
    with ``APPROVAL_PENDING`` (the approval id, Retry-After); the same call sent again with
    ``A2A-Broker-Approval: <id>`` once approved goes ahead, once."""

    def __init__(self, retry_after_s: float) -> None:
        self._retry_after_s = retry_after_s

    def action(self, ctx: LlmContext) -> tuple[str, dict[str, Any]]:
        assert ctx.request is not None  # noqa: S101 - parsed earlier
        target = f"model:{ctx.request.model}"
        digest = action_digest(
            protocol="llm", target=target, operation=f"llm:{ctx.kind}",
            body=ctx.request.body, chain=ctx.chain or (ctx.caller or "",),
        )  # fmt: skip
        fields = {
            "protocol": "llm",
            "target": target,
            "operation": f"llm:{ctx.kind}",
            "tree": ctx.tree or "",
            "summary": f"{ctx.caller} asks to call {target} ({ctx.kind})",
        }
        return digest, fields

    def call(self, ctx: LlmContext) -> bytes:
        return b""  # the caller sends the call again; nothing is forwarded by the broker

    async def held(self, ctx: LlmContext, record: ApprovalRecord) -> Outcome:
        raise pending_error(record, self._retry_after_s)


class CostOverThreshold:
    """An LLM call whose reserved worst-case cost passes ``[approvals] llm_cost_over_usd``
    waits for a human too, as if an ``approve`` rule matched (0: never)."""

    def __init__(self, over_usd: float) -> None:
        self._over_micro = round(over_usd * 1_000_000)

    @property
    def passes_through(self) -> bool:
        """0 (never) checks nothing: ``fold`` leaves the stage out."""
        return not self._over_micro

    async def __call__(self, ctx: LlmContext, call_next: Callable[[LlmContext],
                                                                  Awaitable[Outcome]]) -> Outcome:
        worst = ctx.worst_case
        if self._over_micro and worst is not None and worst.cost_micro > self._over_micro:
            ctx.approval_rule = ctx.approval_rule or (
                f"[approvals] llm_cost_over_usd = {self._over_micro / 1_000_000:g}"
                f" (worst case {worst.cost_micro / 1_000_000:g} USD)"
            )
        return await call_next(ctx)


class TreeBudgetThreshold(Generic[C]):
    """A delegated call that would take its task tree past ``[approvals] tree_budget_percent``
    of one of the tree's budgets waits for a human too (0: never). Costs one store read, and
    only for delegated calls of a tree with a budget while the setting is on.

    ``amount`` is what the call adds (A2A: one call; an LLM call's worst case is reserved by
    the time this runs, so it adds nothing more); None skips the check (not a send)."""

    def __init__(
        self,
        ledger: BudgetLedger,
        percent: float,
        amount: Callable[[C], Usage | None],
        scopes_of: Callable[[C, str], Awaitable[tuple[Scope, ...]]],
    ) -> None:
        self._ledger = ledger
        self._percent = percent
        self._amount = amount
        self._scopes_of = scopes_of  # the call's scopes (with their limits) in a tree

    @property
    def passes_through(self) -> bool:
        """0 (never) checks nothing: ``fold`` leaves the stage out."""
        return not self._percent

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[Outcome]]) -> Outcome:
        if self._percent and not ctx.approval_rule and ctx.parent is not None:
            adds = self._amount(ctx)
            if adds is not None:
                ctx.approval_rule = await self._passed(ctx, ctx.parent.tree, adds)
        return await call_next(ctx)

    async def _passed(self, ctx: C, tree: str, adds: Usage) -> str:
        trees = [scope for scope in await self._scopes_of(ctx, tree) if scope.kind == "tree"]
        if not trees:
            return ""
        for status in await self._ledger.status(trees):
            after = status.used + status.reserved + getattr(adds, status.metric)
            if status.limit and after * 100 > status.limit * self._percent:
                share = after * 100 / status.limit
                return (
                    f"[approvals] tree_budget_percent = {self._percent:g}: the call takes"
                    f" {status.scope} to {share:.0f}% of its {status.metric} per {status.window}"
                )
        return ""

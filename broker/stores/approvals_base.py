"""Approvals: calls held for a human's decision, one record each, shared by every replica.

An approval is bound to a digest of the exact action it holds (``ApprovalRecord.digest``); it
is decided by approvers who are neither the requester nor anyone in its chain (nor its
target), reaches ``approved`` once ``quorum`` distinct approvers said yes (one no decides
``denied``), and is used at most once: ``consume`` turns ``approved`` into ``used`` only for
the same digest, atomically. Pending approvals expire at ``expires_at``; every record is
forgotten ``retain_s`` after it was created past its expiry (a TTL in Redis), so the store
holds only what is alive.

The contract suite is ``tests/contract/test_approval_store.py`` (memory and every Redis mode).
"""

from __future__ import annotations

import abc
from typing import Literal

import msgspec

ApprovalState = Literal["pending", "approved", "denied", "expired", "voided", "cancelled", "used"]
# What a decision, a use or an ending can answer besides "ok".
Refusal = Literal[
    "not_found",  # unknown, or forgotten after its retention
    "not_pending",  # already decided, used, expired, voided or cancelled
    "expired",  # past its expiry (pending, or approved but never used in time)
    "in_chain",  # the approver is the requester, in the chain, or the target
    "already_decided",  # this approver already approved it (quorum counts people, not clicks)
    "not_approved",  # consume: not (or no longer) approved
    "digest_mismatch",  # consume: approved for another action
]
PENDING: ApprovalState = "pending"
# States from which nothing moves any more.
FINAL_STATES: frozenset[str] = frozenset({"denied", "expired", "voided", "cancelled", "used"})


class ApprovalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One approval request and where it stands. ``chain`` is origin first, requester last."""

    id: str
    digest: str  # SHA-256 of the exact action (target, operation, body digest, chain)
    requester: str
    chain: tuple[str, ...]
    target: str  # the agent, or model:<name> for an LLM call
    protocol: Literal["a2a", "llm"] = "a2a"
    operation: str = ""
    skill: str = ""
    tree: str = ""  # the task tree (delegated calls), "" for work not yet started
    summary: str = ""  # what awaits approval, for the people deciding
    rule: str = ""  # the policy rule (or threshold) that asked for approval
    created_at: float
    expires_at: float
    quorum: int = 1
    state: ApprovalState = PENDING
    approved_by: tuple[str, ...] = ()
    decided_by: str = ""  # who denied it, or the approver that completed the quorum
    reason: str = ""  # the decider's reason, or why it expired / was voided / cancelled
    decided_at: float = 0.0
    stream: bool = False  # the caller waits on an open stream (it forwards the approved call)
    agent_task: str = ""  # once forwarded: the agent's own task id
    # Once forwarded, if the caller's message named no context (the broker showed its own id
    # as the context): the agent's context id.
    agent_context: str = ""

    @property
    def deciders(self) -> frozenset[str]:
        """Who may never decide it: the requester, every agent of the chain, the target."""
        return frozenset((*self.chain, self.requester, self.target))


class Outcome(msgspec.Struct, frozen=True):
    """What a decision, a use or an ending did: ``ok`` and the record after it, or a refusal
    (with the record as it stands, None when there is none)."""

    status: Literal["ok"] | Refusal
    record: ApprovalRecord | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ApprovalStore(abc.ABC):
    """Where approvals live. Every method is one atomic step (one Lua script on Redis); a
    backend that cannot reach its storage raises ``StoreUnavailableError``."""

    @abc.abstractmethod
    async def create(
        self, record: ApprovalRecord, call: bytes, retain_s: float
    ) -> ApprovalRecord:
        """Store a new pending ``record`` and the ``call`` it holds (opaque bytes), kept until
        ``record.expires_at + retain_s``, and return it; unless an approval for the same
        digest is still pending: that one is returned and nothing is stored (the same call
        sent again while it waits is the same request)."""

    @abc.abstractmethod
    async def get(self, approval_id: str) -> ApprovalRecord | None:
        """The approval, or None once unknown or forgotten."""

    @abc.abstractmethod
    async def call(self, approval_id: str) -> bytes | None:
        """The call the approval holds, as given to ``create``."""

    @abc.abstractmethod
    async def list(self) -> list[ApprovalRecord]:
        """Every approval still kept, oldest first."""

    @abc.abstractmethod
    async def decide(
        self, approval_id: str, approver: str, approve: bool, reason: str, now: float
    ) -> Outcome:
        """One approver's decision on a pending approval: refused (``in_chain``) for anyone
        in ``deciders``, ``already_decided`` for a second approval by the same person,
        ``expired`` past ``expires_at`` (the state is left to ``end``). A deny decides; an
        approval decides once ``quorum`` distinct approvers gave it."""

    @abc.abstractmethod
    async def consume(self, approval_id: str, digest: str, now: float) -> Outcome:
        """Use an approved approval for the action of ``digest``: at most once, ever."""

    @abc.abstractmethod
    async def end(
        self, approval_id: str, state: ApprovalState, reason: str, now: float
    ) -> Outcome:
        """Move a pending or approved (unused) approval to the final ``state`` (expired,
        voided, cancelled): ``not_pending`` if it was decided otherwise or ended already."""

    @abc.abstractmethod
    async def forwarded(
        self, approval_id: str, agent_task: str, answer: bytes, agent_context: str = ""
    ) -> None:
        """Record, on a used approval, the agent's task id and its answer (for GetTask), and
        the agent's context id if the broker showed its own in its place."""

    @abc.abstractmethod
    async def answer(self, approval_id: str) -> bytes | None:
        """The agent's answer recorded by ``forwarded``, or None."""

"""The approval desk: requests, decisions, expiry and voiding, each audited and notified.

Every replica runs one; the store (memory or Redis) is the truth they share, and each step is
one atomic store operation, so two replicas deciding, expiring or using the same approval at
once agree on one outcome. Whoever makes a transition writes its audit record (exactly one per
request, decision, expiry, voiding, cancellation and use) and sends its notification.

Approvers are the people named in ``[approvals.approvers]``, each with a personal token; the
admin token names no person and decides nothing. Nobody who is the requester, in the chain or
the target decides, whatever their token (the store refuses too).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.errors import (
    ApprovalNotFoundError,
    ApprovalNotUsableError,
    ApproverNotAllowedError,
    BrokerError,
)
from broker.settings_approvals import ApprovalSettings
from broker.stores.approvals_base import (
    PENDING,
    ApprovalRecord,
    ApprovalState,
    ApprovalStore,
    Outcome,
)
from broker.stores.base import AgentRegistry, Revocations

log = logging.getLogger("a2a_broker.approvals")
Notify = Callable[[str, ApprovalRecord], None]
OnApproved = Callable[[ApprovalRecord], Awaitable[None]]
# How often each replica looks for approvals to expire or void.
SWEEP_INTERVAL_S = 1.0
# An approved call still not forwarded this long after its approval is forwarded by whichever
# replica's sweep sees it (the one that saw the approval has died or stopped).
LATE_FORWARD_S = 10.0


class ApprovalDesk:
    def __init__(
        self,
        store: ApprovalStore,
        settings: ApprovalSettings,
        audit: AuditRecorder,
        registry: AgentRegistry,
        revocations: Revocations,
        *,
        notify: Notify | None = None,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._audit = audit
        self._registry = registry
        self._revocations = revocations
        self._notify = notify
        self._tasks = tasks
        # Set by the composition root: forwards an approved call nobody waits on (A2A).
        self.on_approved: OnApproved | None = None
        self._forwarding: set[str] = set()  # approvals this process is forwarding now
        self._approvers = {
            name: a.token_sha256.lower() for name, a in settings.approvers.items() if a.token_sha256
        }

    # --- requests ---------------------------------------------------------------------------

    async def request(self, call: bytes, **fields: object) -> ApprovalRecord:
        """Hold a call: a new pending approval (``fields`` as ``ApprovalRecord``'s), audited
        before anyone is told, then notified; or, for the same action sent again while its
        approval waits, that approval. ``expires_at`` may only shorten the TTL."""
        now = time.time()
        ttl_end = now + self.settings.ttl_s
        expires_at = min(ttl_end, float(fields.pop("expires_at", ttl_end)))  # type: ignore[arg-type]
        record = ApprovalRecord(
            id=f"approval-{uuid.uuid4().hex}",
            created_at=now,
            expires_at=expires_at,
            quorum=self.settings.quorum,
            **fields,  # type: ignore[arg-type]
        )
        in_force = await self.store.create(record, call, self.settings.retain_s)
        if in_force.id != record.id:  # the same call again while it waits: the same request
            return in_force
        await self._audit.event(
            "approval", record.requester, action="approval.request", **_detail(record)
        )
        self._tell("approval.requested", record)
        return record

    # --- decisions --------------------------------------------------------------------------

    def approver(self, token: str | None) -> str | None:
        """The approver whose personal token this is, or None."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        for name, expected in self._approvers.items():
            if hmac.compare_digest(digest, expected):
                return name
        return None

    async def decide(
        self, approval_id: str, approver: str, approve: bool, reason: str
    ) -> ApprovalRecord:
        """One approver's decision. Raises ApprovalNotFoundError, ApproverNotAllowedError
        (in the chain, already decided), ApprovalNotUsableError (decided, expired, voided)."""
        record = await self.current(approval_id)
        if record is None:
            raise ApprovalNotFoundError
        outcome = await self.store.decide(approval_id, approver, approve, reason, time.time())
        if not outcome.ok or outcome.record is None:
            await self._refused(approval_id, approver, outcome)
        decided = outcome.record
        assert decided is not None  # noqa: S101 - ok outcomes carry the record
        action = "approval.deny" if not approve else (
            "approval.approve" if decided.state == "approved" else "approval.vote"
        )
        await self._audit.event(
            "approval", approver, action=action, decision_reason=reason[:300], **_detail(decided)
        )
        self._tell(action, decided)
        if decided.state == "approved":
            self._forward(decided)
        return decided

    async def refused_decision(self, approval_id: str, why: str) -> None:
        """Audit a decision refused before anyone was named (no approver's token)."""
        await self._audit.event(
            "approval", "unknown", action="approval.refused", approval=approval_id[:100], why=why
        )

    async def _refused(self, approval_id: str, approver: str, outcome: Outcome) -> None:
        await self._audit.event(
            "approval", approver, action="approval.refused", approval=approval_id,
            why=outcome.status,
        )
        if outcome.status == "not_found":
            raise ApprovalNotFoundError
        if outcome.status in ("in_chain", "already_decided"):
            raise ApproverNotAllowedError(metadata={"approval_id": approval_id,
                                                    "why": outcome.status})
        state = outcome.record.state if outcome.record else outcome.status
        raise ApprovalNotUsableError(metadata={"approval_id": approval_id, "state": state})

    # --- using an approval ------------------------------------------------------------------

    async def consume(self, approval_id: str, digest: str) -> ApprovalRecord:
        """Use an approved approval for the action of ``digest``, once: audited. Raises
        ApprovalNotUsableError otherwise (audited too)."""
        outcome = await self.store.consume(approval_id, digest, time.time())
        record = outcome.record
        if not outcome.ok or record is None:
            await self._audit.event(
                "approval", record.requester if record else "unknown",
                action="approval.use_refused", approval=approval_id, why=outcome.status,
            )
            raise ApprovalNotUsableError(
                metadata={"approval_id": approval_id, "why": outcome.status}
            )
        await self._audit.event("approval", record.requester, action="approval.use",
                                **_detail(record))
        return record

    # --- endings: expiry, voiding, cancellation ---------------------------------------------

    async def end(self, approval_id: str, state: ApprovalState, why: str) -> ApprovalRecord | None:
        """End a pending or approved (unused) approval; audited and notified by the replica
        whose store step made the change. The record as it stands afterwards."""
        outcome = await self.store.end(approval_id, state, why, time.time())
        if outcome.ok and outcome.record is not None:
            await self._audit.event(
                "approval", "a2a-broker", action=f"approval.{state}", **_detail(outcome.record)
            )
            self._tell(f"approval.{state}", outcome.record)
        return outcome.record

    async def current(self, approval_id: str) -> ApprovalRecord | None:
        """The approval as it stands now: one past its expiry is expired, one whose tree was
        killed or whose requester or target was suspended is voided, first."""
        record = await self.store.get(approval_id)
        return await self._as_now(record, _Seen()) if record is not None else None

    async def _as_now(self, record: ApprovalRecord, seen: _Seen) -> ApprovalRecord | None:
        if record.state not in (PENDING, "approved"):
            return record
        if time.time() >= record.expires_at:
            return await self.end(record.id, "expired", "nobody decided in time")
        why = await self._void_reason(record, seen)
        if why:
            return await self.end(record.id, "voided", why)
        return record

    async def _void_reason(self, record: ApprovalRecord, seen: _Seen) -> str:
        if record.tree:
            if record.tree not in seen.trees:
                seen.trees[record.tree] = await self._revocations.is_tree_killed(record.tree)
            if seen.trees[record.tree]:
                return "the task tree was killed"
        # An LLM call's target is a model, an MCP call's a server: neither is an agent.
        names = (record.requester,) if record.protocol in ("llm", "mcp") else (
            record.requester, record.target)
        for name in names:
            if name not in seen.suspended:
                agent = await self._registry.get(name)
                # A caller-only identity has no record (it cannot be suspended, only revoked).
                seen.suspended[name] = agent is not None and agent.status == "suspended"
            if seen.suspended[name]:
                return f"the agent {name} was suspended"
        return ""

    async def list(self) -> list[ApprovalRecord]:
        """Every approval kept, each as it stands now (expired and voided ones ended). Each
        tree and agent is looked up once per list, however many approvals name it."""
        seen = _Seen()
        found = []
        for record in await self.store.list():
            if (now := await self._as_now(record, seen)) is not None:
                found.append(now)
        return found

    async def sweep_forever(self) -> None:
        """Expire and void approvals as their time comes (every replica; the store makes
        each ending happen once), and forward approved calls left unforwarded (the replica
        that saw the approval died or stopped before forwarding it)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                found = await self.list()
            except BrokerError as err:
                log.warning("approvals not swept this round: %s", err.reason)
                continue
            late = time.time() - LATE_FORWARD_S
            for record in found:
                if record.state == "approved" and record.decided_at < late:
                    self._forward(record)

    # --- plumbing ---------------------------------------------------------------------------

    def _tell(self, event: str, record: ApprovalRecord) -> None:
        if self._notify is not None:
            self._notify(event, record)

    def _forward(self, record: ApprovalRecord) -> None:
        """Forward an approved call (``on_approved``) unless this process is at it already;
        the store's single use makes racing replicas forward it once."""
        if self.on_approved is None or record.id in self._forwarding:
            return
        self._forwarding.add(record.id)
        self._spawn(self.on_approved(record), f"approved {record.id}", record.id)

    def _spawn(self, work: Awaitable[None], name: str, approval_id: str) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                self._forwarding.discard(approval_id)

        if self._tasks is None:
            asyncio.get_running_loop().create_task(run(), name=name)
            return
        try:
            self._tasks.spawn(run(), name)
        except RuntimeError:  # shutting down: another replica's sweep forwards it
            self._forwarding.discard(approval_id)
            log.warning("%s: not started, the broker is shutting down", name)


@dataclass(slots=True)
class _Seen:
    """What one look at the approvals learnt of trees (killed?) and agents (suspended?)."""

    trees: dict[str, bool] = field(default_factory=dict)
    suspended: dict[str, bool] = field(default_factory=dict)


def _detail(record: ApprovalRecord) -> dict[str, Any]:
    return {
        "approval": record.id,
        "state": record.state,
        "target": record.target,
        "operation": record.operation,
        "skill": record.skill,
        "chain": list(record.chain),
        "digest": record.digest,
        "tree": record.tree,
        "rule": record.rule[:300],
        "expires_at": int(record.expires_at),
        "approved_by": list(record.approved_by),
        "decided_by": record.decided_by,
        "reason": record.reason[:300],
    }

"""Approvals in this process's memory (the ``memory`` backend): one replica only."""

from __future__ import annotations

import time

import msgspec

from broker.stores.approvals_base import (
    PENDING,
    ApprovalRecord,
    ApprovalState,
    ApprovalStore,
    Outcome,
)


class _Kept(msgspec.Struct):
    record: ApprovalRecord
    call: bytes
    forget_at: float
    answer: bytes | None = None


class MemoryApprovalStore(ApprovalStore):
    """Each method runs without an await inside, so it is atomic in its event loop."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._by_digest: dict[str, str] = {}

    async def create(
        self, record: ApprovalRecord, call: bytes, retain_s: float
    ) -> ApprovalRecord:
        self._sweep()
        held = self._live(self._by_digest.get(record.digest, ""))
        if held and held.record.state == PENDING and time.time() < held.record.expires_at:
            return held.record
        self._kept[record.id] = _Kept(record, call, record.expires_at + retain_s)
        self._by_digest[record.digest] = record.id
        return record

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        kept = self._live(approval_id)
        return kept.record if kept else None

    async def call(self, approval_id: str) -> bytes | None:
        kept = self._live(approval_id)
        return kept.call if kept else None

    async def list(self) -> list[ApprovalRecord]:
        self._sweep()
        return sorted((k.record for k in self._kept.values()), key=lambda r: r.created_at)

    async def decide(
        self, approval_id: str, approver: str, approve: bool, reason: str, now: float
    ) -> Outcome:
        kept = self._live(approval_id)
        if kept is None:
            return Outcome("not_found")
        record = kept.record
        if record.state != PENDING:
            return Outcome("not_pending", record)
        if now >= record.expires_at:
            return Outcome("expired", record)
        if approver in record.deciders:
            return Outcome("in_chain", record)
        if approver in record.approved_by:
            return Outcome("already_decided", record)
        changes: dict[str, object]
        if not approve:
            changes = {"state": "denied", "decided_by": approver, "reason": reason}
        else:
            voters = (*record.approved_by, approver)
            changes = {"approved_by": voters}
            if len(voters) >= record.quorum:
                changes |= {"state": "approved", "decided_by": approver, "reason": reason}
        kept.record = msgspec.structs.replace(record, decided_at=now, **changes)
        return Outcome("ok", kept.record)

    async def consume(self, approval_id: str, digest: str, now: float) -> Outcome:
        kept = self._live(approval_id)
        if kept is None:
            return Outcome("not_found")
        record = kept.record
        if record.state != "approved":
            return Outcome("not_approved", record)
        if now >= record.expires_at:
            return Outcome("expired", record)
        if digest != record.digest:
            return Outcome("digest_mismatch", record)
        kept.record = msgspec.structs.replace(record, state="used")
        return Outcome("ok", kept.record)

    async def end(
        self, approval_id: str, state: ApprovalState, reason: str, now: float
    ) -> Outcome:
        kept = self._live(approval_id)
        if kept is None:
            return Outcome("not_found")
        if kept.record.state not in (PENDING, "approved"):
            return Outcome("not_pending", kept.record)
        kept.record = msgspec.structs.replace(
            kept.record, state=state, reason=reason, decided_at=now
        )
        return Outcome("ok", kept.record)

    async def forwarded(
        self, approval_id: str, agent_task: str, answer: bytes, agent_context: str = ""
    ) -> None:
        kept = self._live(approval_id)
        if kept is not None and kept.record.state == "used":
            kept.record = msgspec.structs.replace(
                kept.record, agent_task=agent_task, agent_context=agent_context
            )
            kept.answer = answer

    async def answer(self, approval_id: str) -> bytes | None:
        kept = self._live(approval_id)
        return kept.answer if kept else None

    def _live(self, approval_id: str) -> _Kept | None:
        kept = self._kept.get(approval_id)
        if kept is not None and kept.forget_at <= time.time():
            del self._kept[approval_id]
            return None
        return kept

    def _sweep(self) -> None:
        now = time.time()
        for approval_id in [i for i, k in self._kept.items() if k.forget_at <= now]:
            del self._kept[approval_id]
        self._by_digest = {d: i for d, i in self._by_digest.items() if i in self._kept}

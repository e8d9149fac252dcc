"""The approval store: the same contract on every backend (memory, each Redis mode)."""

from __future__ import annotations

import asyncio
import time
import uuid

from broker.stores.approvals_base import ApprovalRecord
from broker.stores.base import Stores

RETAIN_S = 60.0


def pending(quorum: int = 1, ttl_s: float = 60.0, **changes: object) -> ApprovalRecord:
    now = time.time()
    fields: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "digest": uuid.uuid4().hex * 2,
        "requester": "planner",
        "chain": ("user", "planner"),
        "target": "researcher",
        "operation": "SendMessage",
        "skill": "delete-data",
        "tree": "tree-1",
        "summary": "planner -> researcher SendMessage:delete-data",
        "rule": "p, planner, researcher, SendMessage:delete-data, approve",
        "created_at": now,
        "expires_at": now + ttl_s,
        "quorum": quorum,
        **changes,
    }
    return ApprovalRecord(**fields)  # type: ignore[arg-type]


async def test_created_pending_is_read_back_with_its_call(stores: Stores) -> None:
    record = pending()
    await stores.approvals.create(record, b'{"exact": "bytes"}', RETAIN_S)
    assert await stores.approvals.get(record.id) == record
    assert await stores.approvals.call(record.id) == b'{"exact": "bytes"}'
    assert record.id in [r.id for r in await stores.approvals.list()]
    assert await stores.approvals.get("nope") is None


async def test_the_same_action_while_it_waits_is_the_same_request(stores: Stores) -> None:
    approvals = stores.approvals
    first = pending()
    assert await approvals.create(first, b"call", RETAIN_S) == first
    again = pending(digest=first.digest)
    assert await approvals.create(again, b"call", RETAIN_S) == first
    assert await approvals.get(again.id) is None
    other = pending()
    assert await approvals.create(other, b"call", RETAIN_S) == other
    await approvals.decide(first.id, "alice", False, "no", time.time())
    assert await approvals.create(again, b"call", RETAIN_S) == again  # a new request now


async def test_approve_then_consume_once_for_the_same_digest(stores: Stores) -> None:
    approvals = stores.approvals
    record = pending()
    await approvals.create(record, b"call", RETAIN_S)
    decided = await approvals.decide(record.id, "alice", True, "looks fine", time.time())
    assert decided.ok and decided.record is not None
    assert decided.record.state == "approved"
    assert decided.record.approved_by == ("alice",)
    assert decided.record.decided_by == "alice" and decided.record.reason == "looks fine"
    wrong = await approvals.consume(record.id, "e" * 64, time.time())  # another action
    assert wrong.status == "digest_mismatch"
    used = await approvals.consume(record.id, record.digest, time.time())
    assert used.ok and used.record is not None and used.record.state == "used"
    again = await approvals.consume(record.id, record.digest, time.time())
    assert again.status == "not_approved"


async def test_nobody_in_the_chain_decides(stores: Stores) -> None:
    record = pending()
    await stores.approvals.create(record, b"call", RETAIN_S)
    for who in ("user", "planner", "researcher"):
        outcome = await stores.approvals.decide(record.id, who, True, "", time.time())
        assert outcome.status == "in_chain"
    assert (await stores.approvals.get(record.id)).state == "pending"  # type: ignore[union-attr]


async def test_quorum_counts_distinct_people_and_one_deny_decides(stores: Stores) -> None:
    approvals = stores.approvals
    record = pending(quorum=2)
    await approvals.create(record, b"call", RETAIN_S)
    first = await approvals.decide(record.id, "alice", True, "", time.time())
    assert first.ok and first.record is not None and first.record.state == "pending"
    twice = await approvals.decide(record.id, "alice", True, "", time.time())
    assert twice.status == "already_decided"
    second = await approvals.decide(record.id, "bob", True, "ok", time.time())
    assert second.record is not None and second.record.state == "approved"
    assert second.record.approved_by == ("alice", "bob")
    other = pending(quorum=2)
    await approvals.create(other, b"call", RETAIN_S)
    await approvals.decide(other.id, "alice", True, "", time.time())
    denied = await approvals.decide(other.id, "bob", False, "no way", time.time())
    assert denied.record is not None and denied.record.state == "denied"
    assert denied.record.decided_by == "bob" and denied.record.reason == "no way"
    late = await approvals.decide(other.id, "carol", True, "", time.time())
    assert late.status == "not_pending"


async def test_expired_is_neither_decided_nor_used(stores: Stores) -> None:
    approvals = stores.approvals
    record = pending(ttl_s=0.2)
    await approvals.create(record, b"call", RETAIN_S)
    later = record.expires_at + 0.01
    assert (await approvals.decide(record.id, "alice", True, "", later)).status == "expired"
    ended = await approvals.end(record.id, "expired", "nobody decided in time", later)
    assert ended.ok and ended.record is not None and ended.record.state == "expired"
    assert (await approvals.end(record.id, "voided", "", later)).status == "not_pending"
    assert (await approvals.consume(record.id, record.digest, later)).status == "not_approved"


async def test_an_approved_call_unused_past_expiry_is_not_used(stores: Stores) -> None:
    record = pending(ttl_s=5.0)
    await stores.approvals.create(record, b"call", RETAIN_S)
    await stores.approvals.decide(record.id, "alice", True, "", time.time())
    outcome = await stores.approvals.consume(record.id, record.digest, record.expires_at + 1)
    assert outcome.status == "expired"


async def test_void_and_cancel_end_pending_and_approved(stores: Stores) -> None:
    approvals = stores.approvals
    a, b = pending(), pending()
    await approvals.create(a, b"call", RETAIN_S)
    await approvals.create(b, b"call", RETAIN_S)
    await approvals.decide(b.id, "alice", True, "", time.time())
    voided = await approvals.end(a.id, "voided", "tree killed", time.time())
    assert voided.record is not None and voided.record.reason == "tree killed"
    cancelled = await approvals.end(b.id, "cancelled", "caller cancelled", time.time())
    assert cancelled.record is not None and cancelled.record.state == "cancelled"
    assert (await approvals.consume(b.id, b.digest, time.time())).status == "not_approved"
    assert (await approvals.end("nope", "voided", "", time.time())).status == "not_found"


async def test_the_answer_is_kept_for_a_used_approval_only(stores: Stores) -> None:
    approvals = stores.approvals
    record = pending()
    await approvals.create(record, b"call", RETAIN_S)
    await approvals.forwarded(record.id, "t-1", b"early")
    assert await approvals.answer(record.id) is None
    await approvals.decide(record.id, "alice", True, "", time.time())
    await approvals.consume(record.id, record.digest, time.time())
    await approvals.forwarded(record.id, "t-1", b'{"task": {}}')
    assert await approvals.answer(record.id) == b'{"task": {}}'
    assert (await approvals.get(record.id)).agent_task == "t-1"  # type: ignore[union-attr]
    assert (await approvals.get(record.id)).agent_context == ""  # type: ignore[union-attr]
    await approvals.forwarded(record.id, "t-1", b"", "c-1")  # the broker showed its own context
    kept = await approvals.get(record.id)
    assert kept is not None and (kept.agent_task, kept.agent_context) == ("t-1", "c-1")
    assert [r.agent_context for r in await approvals.list() if r.id == record.id] == ["c-1"]


async def test_racing_uses_of_one_approval_make_one_winner(stores: Stores) -> None:
    approvals = stores.approvals
    record = pending()
    await approvals.create(record, b"call", RETAIN_S)
    await approvals.decide(record.id, "alice", True, "", time.time())
    results = await asyncio.gather(
        *(approvals.consume(record.id, record.digest, time.time()) for _ in range(20))
    )
    assert sum(r.ok for r in results) == 1


async def test_forgotten_after_retention(stores: Stores) -> None:
    record = pending(ttl_s=0.0001)
    await stores.approvals.create(record, b"call", 1.0)
    await asyncio.sleep(2.2)
    assert await stores.approvals.get(record.id) is None
    assert record.id not in [r.id for r in await stores.approvals.list()]

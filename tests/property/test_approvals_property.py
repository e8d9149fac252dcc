"""Approvals cannot be abused, whatever the interleaving: three replicas (three clients of one
Redis; and the memory store) race approvals, denials and uses of the same approval, each with
the right digest or another one.

Properties: an approval is used at most once; a use with another action's digest never
succeeds; nothing is used unless approved by a quorum of distinct approvers, none of them in the
chain; a denied approval is never used.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.settings import StoreSettings
from broker.stores.approvals_base import ApprovalRecord, ApprovalStore
from broker.stores.factory import open_backend
from broker.stores.memory_approvals import MemoryApprovalStore

DIGEST = "a" * 64
OTHER = "b" * 64
CHAIN = ("user", "planner")
PEOPLE = ("oscar", "pat", "quinn", "planner", "user", "researcher")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("decide"), st.sampled_from(PEOPLE), st.booleans()),
        st.tuples(st.just("use"), st.sampled_from((DIGEST, OTHER)), st.just(True)),
    ),
    min_size=1,
    max_size=12,
)


def _record(quorum: int) -> ApprovalRecord:
    now = time.time()
    return ApprovalRecord(
        id=f"approval-{uuid.uuid4().hex}", digest=DIGEST, requester="planner", chain=CHAIN,
        target="researcher", created_at=now, expires_at=now + 60, quorum=quorum,
    )  # fmt: skip


async def _race(replicas: list[ApprovalStore], quorum: int, plan: list[Any]) -> None:
    record = _record(quorum)
    await replicas[0].create(record, b"call", 60)

    async def step(index: int, what: tuple[str, str, bool]) -> tuple[str, str, bool, str]:
        store = replicas[index % len(replicas)]
        kind, arg, yes = what
        if kind == "decide":
            outcome = await store.decide(record.id, arg, yes, "", time.time())
        else:
            outcome = await store.consume(record.id, arg, time.time())
        return kind, arg, yes, outcome.status

    results = await asyncio.gather(*(step(i, s) for i, s in enumerate(plan)))
    uses = [r for r in results if r[0] == "use" and r[3] == "ok"]
    assert len(uses) <= 1, results
    assert all(arg == DIGEST for _, arg, _, _ in uses), results
    final = await replicas[0].get(record.id)
    assert final is not None
    assert not set(final.approved_by) & {*CHAIN, "researcher"}
    assert len(set(final.approved_by)) == len(final.approved_by)
    if uses:
        assert final.state == "used" and len(final.approved_by) >= quorum
    denials = [r for r in results if r[0] == "decide" and not r[2] and r[3] == "ok"]
    if denials:
        assert final.state == "denied" and not uses


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quorum=st.integers(1, 3), plan=steps)
def test_memory_store_uses_an_approval_at_most_once(quorum: int, plan: list[Any]) -> None:
    store = MemoryApprovalStore()
    asyncio.run(_race([store, store, store], quorum, plan))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(quorum=st.integers(1, 3), plan=steps)
def test_three_replicas_on_redis_use_an_approval_at_most_once(
    redis_url: str, quorum: int, plan: list[Any]
) -> None:
    async def run() -> None:
        prefix = f"prop-{uuid.uuid4().hex[:8]}"
        backends = [open_backend(StoreSettings(backend="redis", redis_url=redis_url,
                                               key_prefix=prefix)) for _ in range(3)]
        try:
            await _race([b.stores().approvals for b in backends], quorum, plan)
        finally:
            for backend in backends:
                await backend.close()

    asyncio.run(run())

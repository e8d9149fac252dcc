"""Metrics hooks, batching, and the console's pieces that need no process."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.stores.memory import MemoryStore
from prometheus_client import CollectorRegistry, Counter, Histogram

from broker.audit.records import AuditRecord
from broker.console.records import build_tree
from broker.console.sessions import Sessions
from broker.errors import HopLimitExceededError, PolicyDeniedError, UpstreamTimeoutError
from broker.observability import metrics, record, tally
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.settings_observability import ConsoleSettings
from broker.stores.base import AgentRecord
from broker.types import MediationContext


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), max_size=60))
def test_batched_observations_equal_direct_ones(values: list[float]) -> None:
    """A histogram fed through the tally reads exactly as one fed value by value."""
    batched, direct = CollectorRegistry(), CollectorRegistry()
    buckets = metrics.TOTAL_BUCKETS
    h_batched = Histogram("h", "h", ("k",), buckets=buckets, registry=batched).labels("x")
    h_direct = Histogram("h", "h", ("k",), buckets=buckets, registry=direct).labels("x")
    c_batched = Counter("c", "c", registry=batched)
    c_direct = Counter("c", "c", registry=direct)
    for value in values:
        tally.observe(h_batched, value)
        tally.add(c_batched, value)
        h_direct.observe(value)
        c_direct.inc(value)
    tally.flush()
    got, want = _samples(batched), _samples(direct)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value)


async def test_on_the_event_loop_values_arrive_within_the_flush_interval() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    tally.add(counter)
    assert registry.get_sample_value("c_total") == 0  # batched, not written yet
    await asyncio.sleep(tally.FLUSH_S * 2)
    assert registry.get_sample_value("c_total") == 1


def test_outcomes() -> None:
    assert record.outcome_of(None, 200, 200) == "ok"
    assert record.outcome_of(None, 404, 404) == "agent_error"
    assert record.outcome_of(PolicyDeniedError(), 403, None) == "refused"
    assert record.outcome_of(UpstreamTimeoutError(), 504, 200) == "failed"


async def _body() -> bytes:
    return b""


def _sample(name: str, **labels: str) -> float:
    tally.flush()
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_unverified_names_never_become_labels() -> None:
    """A caller the broker did not verify, a target it does not know: both are '-'."""
    ctx = MediationContext("jsonrpc", "made-up-name-123", "POST", headers={}, read_body=_body)
    ctx.error = PolicyDeniedError()
    labels = {"caller": "-", "target": "-", "operation": "-", "binding": "jsonrpc"}
    labels |= {"outcome": "refused", "reason": "POLICY_DENIED"}
    before = _sample("a2a_broker_requests_total", **labels)
    record.observe_mediated(ctx, 403)
    after = _sample("a2a_broker_requests_total", **labels)
    assert after == before + 1
    families = {s.labels.get("target") for f in metrics.REGISTRY.collect() for s in f.samples}
    assert "made-up-name-123" not in families


def test_policy_and_guard_refusals_are_counted() -> None:
    ctx = MediationContext("rest", "bench", "POST", headers={}, read_body=_body, caller="alice")
    ctx.target = AgentRecord(name="bench", card_json="{}")
    ctx.operation, ctx.policy_version = SEND_MESSAGE, "v1"
    ctx.error = HopLimitExceededError()
    guard = "a2a_broker_guard_refusals_total"
    allowed = "a2a_broker_policy_decisions_total"
    before = (_sample(guard, guard="HOP_LIMIT_EXCEEDED"), _sample(allowed, decision="allow",
              operation="SendMessage"))  # fmt: skip
    record.observe_mediated(ctx, 403)
    assert _sample(guard, guard="HOP_LIMIT_EXCEEDED") == before[0] + 1
    # The hop passed policy (a guard refused it after): one "allow" decision.
    assert _sample(allowed, decision="allow", operation="SendMessage") == before[1] + 1
    assert record.recent[-1].caller == "alice"


def test_recording_off_records_nothing() -> None:
    ctx = MediationContext("jsonrpc", "bench", "POST", headers={}, read_body=_body, caller="zed")
    metrics.recording = False
    try:
        record.observe_mediated(ctx, 200)
    finally:
        metrics.recording = True
    assert _sample("a2a_broker_requests_total", caller="zed", target="-", operation="-",
                   binding="jsonrpc", outcome="ok", reason="") == 0  # fmt: skip


def _record(
    seq: int, request_id: str, chain: list[str], target: str, phase: str, *,
    status: int = 0, reason: str = "",
) -> AuditRecord:  # fmt: skip
    return msgspec.convert(
        {
            "v": 1, "seq": seq, "ts_us": seq, "replica": "r1", "kind": "request",
            "request_id": request_id, "caller": chain[-1], "chain": chain, "tree": "t1",
            "target": target, "operation": "SendMessage", "skill": "",
            "decision": "deny" if phase == "refused" else "allow", "reason": reason, "rule": "",
            "status": status, "latency_us": 0, "tokens_in": 0, "tokens_out": 0, "cost_micro": 0,
            "request_digest": "", "response_digest": "",
            "detail": {"phase": phase}, "prev": "", "hash": "",
        },
        AuditRecord,
    )


def test_a_tree_is_drawn_from_its_chains() -> None:
    records = [
        _record(1, "r1", ["alice"], "planner", "forward"),
        _record(2, "r2", ["alice", "planner"], "researcher", "forward"),
        _record(3, "r3", ["alice", "planner"], "writer", "refused", status=403, reason="NO"),
        _record(4, "r2", ["alice", "planner"], "researcher", "outcome", status=200),
    ]
    [root] = build_tree(records)
    assert root.agent == "alice"
    [planner] = root.children
    assert planner.agent == "planner"
    assert planner.status == "open"  # its call has no outcome yet
    statuses = {hop.agent: hop.status for hop in planner.children}
    assert statuses == {"researcher": "ok", "writer": "refused"}


async def test_sessions_end_after_their_idle_time() -> None:
    settings = ConsoleSettings(idle_timeout_s=1.0, session_ttl_s=60.0)
    sessions = Sessions(MemoryStore(), settings)
    opened = await sessions.create()
    assert await sessions.get(opened.session_id) == opened.session
    assert await sessions.get("someone-else's") is None
    await asyncio.sleep(1.2)
    assert await sessions.get(opened.session_id) is None


async def test_sessions_end_at_logout_and_after_their_lifetime() -> None:
    sessions = Sessions(MemoryStore(), ConsoleSettings(session_ttl_s=1.0))
    first, second = await sessions.create(), await sessions.create()
    await sessions.drop(first.session_id)
    assert await sessions.get(first.session_id) is None
    await asyncio.sleep(1.1)
    assert await sessions.get(second.session_id) is None


def test_a_request_seen_is_stored_as_the_same_json_object() -> None:
    # The shared traffic store's rows: what older workers wrote must still decode, and the
    # other way round.
    seen = record.RequestSeen("r1", "a", "b", "SendMessage", "jsonrpc", "ok", "", 200, 0.25,
                              "t1", 1, 1700000000.5)  # fmt: skip
    row = (
        b'{"request_id":"r1","caller":"a","target":"b","operation":"SendMessage",'
        b'"binding":"jsonrpc","outcome":"ok","reason":"","status":200,"latency_s":0.25,'
        b'"tree":"t1","depth":1,"at":1700000000.5}'
    )
    assert msgspec.json.encode(seen) == row
    assert msgspec.json.decode(row, type=record.RequestSeen) == seen
    assert record.RequestSeen("r2", "a", "b", "op", "rest", "ok", "", 200, 0.1, "").at > 0

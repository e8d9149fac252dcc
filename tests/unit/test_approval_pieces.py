"""The approval pieces against the memory stores: the policy's approve effect, the desk, the
stage in both pipelines (A2A's broker-owned task, the LLM's pending refusal), and their place
in the pipelines' order."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from stage_kit import MINTER, Next, ctx

from broker.approvals import desk as desk_module
from broker.approvals.a2a import A2aApprovals, ApprovalTasks
from broker.approvals.desk import ApprovalDesk
from broker.approvals.stages import APPROVAL_HEADER, RequireApproval, TreeBudgetThreshold
from broker.approvals.webhook import EVENT_HEADER, ApprovalWebhook
from broker.audit.recorder import AuditRecorder
from broker.budgets.model import ONE_CALL
from broker.budgets.scopes import ConfiguredScopes
from broker.errors import (
    ApprovalDeniedError,
    ApprovalNotFoundError,
    ApprovalNotUsableError,
    ApprovalPendingError,
    ApproverNotAllowedError,
    TaskNotCancelableError,
)
from broker.outbound.fake import FakeResponse, FakeTransport, answering
from broker.outbound.webhook import SIGNATURE_HEADER
from broker.policy.engine import PolicyEngine
from broker.policy.rules import PolicyError
from broker.protocols.a2a.operations import CANCEL_TASK, GET_PUSH_CONFIG, GET_TASK
from broker.settings import BudgetLimitSettings, BudgetSettings, EgressSettings
from broker.settings_approvals import (
    ApprovalSettings,
    ApprovalWebhookSettings,
    ApproverSettings,
)
from broker.stores.approvals_base import ApprovalRecord
from broker.stores.base import Stores
from broker.stores.memory import MemoryBackend
from broker.types import AgentRecord, MediationContext, Reply

MODEL = (Path(__file__).resolve().parents[2] / "policies" / "model.conf").read_text()


class Audit(AuditRecorder):
    def __init__(self) -> None:
        super().__init__(None)
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def event(self, kind: str, actor: str, **detail: Any) -> None:
        self.events.append((actor, detail))

    def actions(self) -> list[str]:
        return [d["action"] for _, d in self.events]


def engine(text: str) -> PolicyEngine:
    made = PolicyEngine(MODEL)
    made.swap(made.load_text(text, "p.csv"))
    return made


# --- policy ---------------------------------------------------------------------------------

POLICY = """\
g, alice, role:user
g, planner, role:agent
g2, researcher, group:workers
p, role:user, *, originate, allow
p, role:user, group:workers, SendMessage:*, allow
p, role:agent, group:workers, SendMessage:*, allow
p, role:user, group:workers, SendMessage:wipe, approve
p, planner, researcher, SendMessage:nuke, approve
p, planner, researcher, SendMessage:nuke, deny
p, alice, group:workers, GetTask:*, approve
"""


def test_approve_is_allowed_but_held_and_deny_beats_it() -> None:
    policy = engine(POLICY)
    plain = policy.decide_chain(("alice",), "researcher", "SendMessage:read")
    assert plain.allowed and not plain.needs_approval
    held = policy.decide_chain(("alice",), "researcher", "SendMessage:wipe")
    assert held.allowed and held.needs_approval and held.approval is not None
    assert held.approval.line == 7 and held.approval_principal == "alice"
    denied = policy.decide_chain(("alice", "planner"), "researcher", "SendMessage:nuke")
    assert not denied.allowed and denied.reason == "explicit_deny"
    # An approve rule grants on its own (no allow needed), and holds.
    alone = policy.decide_chain(("alice",), "researcher", "GetTask:")
    assert alone.allowed and alone.needs_approval


def test_the_origins_approve_rule_holds_its_delegated_hops() -> None:
    held = engine(POLICY).decide_chain(("alice", "planner"), "researcher", "SendMessage:wipe")
    assert held.allowed and held.needs_approval and held.approval_principal == "alice"


def test_approve_cannot_be_given_to_the_special_actions() -> None:
    with pytest.raises(PolicyError, match="approve applies to calls"):
        engine("g, a, role:x\np, role:x, *, originate, approve\n")


# --- the desk -------------------------------------------------------------------------------

SETTINGS = ApprovalSettings(ttl_s=60)


async def stores_with_agents() -> Stores:
    stores = MemoryBackend().stores()
    for name in ("alice", "planner", "researcher"):
        await stores.registry.create(AgentRecord(name=name, card_json="{}"))
    return stores


def desk_for(stores: Stores, audit: Audit | None = None, **settings: Any) -> ApprovalDesk:
    return ApprovalDesk(
        stores.approvals, msgspec.structs.replace(SETTINGS, **settings), audit or Audit(),
        stores.registry, stores.revocations,
    )  # fmt: skip


async def request(desk: ApprovalDesk, tree: str = "t1") -> Any:
    return await desk.request(
        b"call", digest=f"{tree}-{uuid.uuid4().hex}", requester="planner",
        chain=("alice", "planner"),
        target="researcher", operation="SendMessage", tree=tree, summary="s", rule="r",
    )  # fmt: skip


async def test_every_step_is_audited_and_the_chain_never_decides() -> None:
    audit = Audit()
    desk = desk_for(await stores_with_agents(), audit)
    record = await request(desk)
    for person in ("alice", "planner", "researcher"):
        with pytest.raises(ApproverNotAllowedError):
            await desk.decide(record.id, person, True, "")
    approved = await desk.decide(record.id, "oscar", True, "ok")
    assert approved.state == "approved"
    await desk.consume(record.id, record.digest)
    with pytest.raises(ApprovalNotUsableError):
        await desk.consume(record.id, record.digest)
    assert audit.actions() == [
        "approval.request", *["approval.refused"] * 3, "approval.approve", "approval.use",
        "approval.use_refused",
    ]
    with pytest.raises(ApprovalNotFoundError):
        await desk.decide("approval-nope", "oscar", True, "")


async def test_a_killed_tree_or_a_suspended_agent_voids_pending_approvals() -> None:
    stores = await stores_with_agents()
    audit = Audit()
    desk = desk_for(stores, audit)
    in_tree, other = await request(desk, "t1"), await request(desk, "t2")
    await stores.revocations.kill_tree("t1", time.time() + 60)
    with pytest.raises(ApprovalNotUsableError):
        await desk.decide(in_tree.id, "oscar", True, "")
    assert (await desk.current(in_tree.id)).state == "voided"  # type: ignore[union-attr]
    await stores.registry.set_status("researcher", "suspended", time.time())
    listed = {r.id: r for r in await desk.list()}
    assert listed[other.id].state == "voided"
    assert "researcher" in listed[other.id].reason
    assert audit.actions().count("approval.voided") == 2


async def test_an_approval_nobody_decided_expires_once() -> None:
    audit = Audit()
    desk = desk_for(await stores_with_agents(), audit, ttl_s=0.01)
    record = await request(desk)
    await asyncio.sleep(0.02)
    assert (await desk.current(record.id)).state == "expired"  # type: ignore[union-attr]
    assert (await desk.current(record.id)).state == "expired"  # type: ignore[union-attr]
    assert audit.actions().count("approval.expired") == 1


def test_approvers_are_known_by_their_token_only() -> None:
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # "test"
    oscar = ApproverSettings(token_sha256=digest)
    desk = desk_for(MemoryBackend().stores(), approvers={"oscar": oscar})
    assert desk.approver("test") == "oscar"
    assert desk.approver("nope") is None and desk.approver(None) is None


# --- the stage ------------------------------------------------------------------------------


class NoStore:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was asked ({name}) for a call with no approve rule")


async def test_a_call_without_an_approve_rule_costs_no_store_round_trip() -> None:
    desk = ApprovalDesk(NoStore(), SETTINGS, Audit(), NoStore(), NoStore())  # type: ignore[arg-type]
    stage = RequireApproval[MediationContext](desk, A2aApprovals(desk, NoStore(), 15))  # type: ignore[arg-type]
    call_next = Next()
    await stage(ctx(), call_next)
    assert call_next.called


def held_ctx(caller: str = "alice", body: bytes = b'{"jsonrpc":"2.0","id":7}') -> MediationContext:
    made = ctx(caller=caller, target="researcher")
    made.approval_rule = "p, role:user, group:workers, SendMessage:*, approve"
    made.body = body
    made.jsonrpc_id = msgspec.Raw(b"7")
    return made


async def test_a_held_send_answers_with_a_broker_owned_task_and_forwards_nothing() -> None:
    stores = await stores_with_agents()
    desk = desk_for(stores)
    approvals = A2aApprovals(desk, stores.task_routes, 15)
    call_next = Next()
    reply = await RequireApproval[MediationContext](desk, approvals)(held_ctx(), call_next)
    assert not call_next.called
    assert isinstance(reply, Reply)
    task = msgspec.json.decode(reply.body)["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_AUTH_REQUIRED"
    assert task["metadata"]["a2a-broker/approval"]["state"] == "pending"
    route = await stores.task_routes.get("researcher", task["id"])
    assert route is not None and route.owner == "alice"
    # GetTask and CancelTask on it are the broker's; a second cancel is refused.
    tasks = ApprovalTasks(approvals)
    for op, state in ((GET_TASK, "TASK_STATE_AUTH_REQUIRED"), (CANCEL_TASK, "TASK_STATE_CANCELED")):
        asked = held_ctx()
        asked.operation, asked.task_id = op, task["id"]
        answer = await tasks(asked, call_next)
        assert msgspec.json.decode(answer.body)["result"]["status"]["state"] == state  # type: ignore[union-attr]
    again = held_ctx()
    again.operation, again.task_id = CANCEL_TASK, task["id"]
    with pytest.raises(TaskNotCancelableError):
        await tasks(again, call_next)
    other = held_ctx()
    other.operation, other.task_id = GET_PUSH_CONFIG, "not-an-approval"
    await tasks(other, call_next)
    assert call_next.called  # anything else passes


async def test_a_held_call_under_a_presented_approval_goes_ahead_once_and_only_as_approved(
) -> None:
    stores = await stores_with_agents()
    desk = desk_for(stores)
    approvals = A2aApprovals(desk, stores.task_routes, 15)
    stage = RequireApproval[MediationContext](desk, approvals)
    first = held_ctx()
    first.operation = CANCEL_TASK  # a non-send held call: refused as pending, with its id
    with pytest.raises(ApprovalPendingError) as pending:
        await stage(first, Next())
    approval = pending.value.metadata["approval_id"]
    retry = held_ctx()
    retry.operation = CANCEL_TASK
    retry.headers = {APPROVAL_HEADER: approval}
    with pytest.raises(ApprovalPendingError):
        await stage(retry, Next())
    await desk.decide(approval, "oscar", True, "")
    tampered = held_ctx(body=b'{"jsonrpc":"2.0","id":8}')
    tampered.operation, tampered.headers = CANCEL_TASK, {APPROVAL_HEADER: approval}
    with pytest.raises(ApprovalNotUsableError):
        await stage(tampered, Next())
    call_next = Next()
    await stage(retry, call_next)
    assert call_next.called
    with pytest.raises(ApprovalNotUsableError):
        await stage(retry, Next())


async def test_a_denied_approval_says_so() -> None:
    stores = await stores_with_agents()
    desk = desk_for(stores)
    stage = RequireApproval[MediationContext](desk, A2aApprovals(desk, stores.task_routes, 15))
    first = held_ctx()
    first.operation = CANCEL_TASK
    with pytest.raises(ApprovalPendingError) as pending:
        await stage(first, Next())
    approval = pending.value.metadata["approval_id"]
    await desk.decide(approval, "oscar", False, "no")
    retry = held_ctx()
    retry.operation, retry.headers = CANCEL_TASK, {APPROVAL_HEADER: approval}
    with pytest.raises(ApprovalDeniedError):
        await stage(retry, Next())


# --- budget thresholds ----------------------------------------------------------------------


async def test_a_hop_that_takes_its_tree_past_the_threshold_is_held() -> None:
    stores = MemoryBackend().stores()
    budgets = BudgetSettings(trees=(BudgetLimitSettings(metric="calls", window="lifetime",
                                                        limit=10),))
    scopes = ConfiguredScopes(budgets)
    _, parent = MINTER.mint_origin("alice", "planner", ("a2a:SendMessage",))

    async def tree_scopes(ctx: MediationContext, tree: str) -> tuple[Any, ...]:
        return scopes.for_call("planner", (), tree, "researcher")

    stage = TreeBudgetThreshold[MediationContext](
        stores.budgets, 80, lambda _: ONE_CALL, tree_scopes
    )
    held = list(scopes.for_call("planner", (), parent.tree, "researcher"))
    for _ in range(7):
        reservation = await stores.budgets.reserve(held, ONE_CALL, ttl_s=60)
        await stores.budgets.settle(reservation, ONE_CALL)  # type: ignore[arg-type]
    below = held_ctx(caller="planner")
    below.approval_rule, below.parent = "", parent
    await stage(below, Next())
    assert below.approval_rule == ""  # 8 of 10: 80%, not past it
    reservation = await stores.budgets.reserve(held, ONE_CALL, ttl_s=60)
    await stores.budgets.settle(reservation, ONE_CALL)  # type: ignore[arg-type]
    past = held_ctx(caller="planner")
    past.approval_rule, past.parent = "", parent
    await stage(past, Next())
    assert "tree_budget_percent = 80" in past.approval_rule and "90%" in past.approval_rule


# --- the webhook ----------------------------------------------------------------------------


def hooked(transport: FakeTransport, attempts: int = 3) -> ApprovalWebhook:
    settings = ApprovalWebhookSettings(url="https://hooks.example/approvals", key_env="K",
                                       attempts=attempts)
    return ApprovalWebhook(settings, b"key", transport, "https://broker.example", None,
                           first_backoff_s=0.01)


def a_record() -> Any:
    now = time.time()
    return ApprovalRecord(id="approval-1", digest="d", requester="planner",
                          chain=("alice", "planner"), target="researcher", created_at=now,
                          expires_at=now + 60)


async def test_the_webhook_is_signed_and_retried_until_delivered() -> None:
    transport = FakeTransport(answering(FakeResponse(503), FakeResponse(500), FakeResponse(204)))
    assert await hooked(transport).send("approval.requested", a_record())
    assert len(transport.sent) == 3
    sent = transport.sent[-1]
    assert sent.body is not None
    stamp, _, mac = sent.headers[SIGNATURE_HEADER].partition(",v1=")
    signed = stamp.removeprefix("t=").encode() + b"." + sent.body
    assert mac == hmac.new(b"key", signed, hashlib.sha256).hexdigest()
    assert sent.headers[EVENT_HEADER] == "approval.requested"
    body = msgspec.json.decode(sent.body)
    assert body["event"] == "approval.requested"
    assert body["decide_url"] == "https://broker.example/admin/approvals/approval-1"


async def test_the_webhook_gives_up_after_its_attempts_and_obeys_egress() -> None:
    failing = FakeTransport(answering(FakeResponse(500)))
    assert not await hooked(failing, attempts=2).send("approval.requested", a_record())
    assert len(failing.sent) == 2
    private = FakeTransport(answering(FakeResponse(204)), EgressSettings(allow_loopback=False))
    settings = ApprovalWebhookSettings(url="http://127.0.0.1:9/hook", key_env="K", attempts=1)
    hook = ApprovalWebhook(settings, b"key", private, "https://b", None)
    assert not await hook.send("approval.requested", a_record())  # egress refused it
    assert private.sent == []


def test_a_webhook_without_its_key_is_a_configuration_error() -> None:
    settings = ApprovalWebhookSettings(url="https://hooks.example/x", key_env="MISSING")
    with pytest.raises(ValueError, match="key_env"):
        ApprovalWebhook.from_settings(settings, {}, FakeTransport(answering(FakeResponse())),
                                      "https://b", None)


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (b'{"jsonrpc":"2.0","id":7,"result":{"message":{"messageId":"m","role":"ROLE_AGENT",'
         b'"parts":[{"text":"done"}]}}}', "TASK_STATE_COMPLETED"),
        (b'{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"boom"}}', "TASK_STATE_FAILED"),
    ],
)
async def test_an_approved_call_answered_without_a_task_ends_the_brokers_task(
    answer: bytes, state: str
) -> None:
    stores = await stores_with_agents()
    desk = desk_for(stores)
    approvals = A2aApprovals(desk, stores.task_routes, 15)
    forwarded: list[MediationContext] = []

    async def resume(ctx: MediationContext) -> Reply:
        await desk.consume(ctx.approval_id, (await desk.store.get(ctx.approval_id)).digest)  # type: ignore[union-attr]
        forwarded.append(ctx)
        return Reply(200, answer)

    approvals.resume = resume
    held = await RequireApproval[MediationContext](desk, approvals)(held_ctx(), Next())
    approval = msgspec.json.decode(held.body)["result"]["task"]["id"]  # type: ignore[union-attr]
    await desk.decide(approval, "oscar", True, "")
    await approvals.forward(approval)
    assert forwarded[0].caller == "alice" and forwarded[0].approval_id == approval
    asked = held_ctx()
    asked.operation, asked.task_id = GET_TASK, approval
    reply = await ApprovalTasks(approvals)(asked, Next())
    assert msgspec.json.decode(reply.body)["result"]["status"]["state"] == state  # type: ignore[union-attr]


async def test_an_approved_call_left_unforwarded_is_forwarded_by_another_replicas_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(desk_module, "LATE_FORWARD_S", 0.0)
    monkeypatch.setattr(desk_module, "SWEEP_INTERVAL_S", 0.01)
    stores = await stores_with_agents()
    gone = desk_for(stores)  # saw the approval, then died before forwarding
    record = await request(gone)
    await gone.decide(record.id, "oscar", True, "")
    survivor = desk_for(stores)
    forwarded: list[str] = []

    async def forward(approved: Any) -> None:
        forwarded.append(approved.id)
        await survivor.consume(approved.id, approved.digest)

    survivor.on_approved = forward
    sweeping = asyncio.create_task(survivor.sweep_forever())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if forwarded:
                break
    finally:
        sweeping.cancel()
    await asyncio.sleep(0.05)
    assert forwarded == [record.id]
    assert (await stores.approvals.get(record.id)).state == "used"  # type: ignore[union-attr]

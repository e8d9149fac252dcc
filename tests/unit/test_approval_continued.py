"""A send that continues a broker-owned approval task, once the approved call was forwarded,
reaches the agent's task (and context) on both bindings, and the agent's answers name the
broker's task; before that, or for another caller, it is refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from stage_kit import Next, ctx, stream_of
from test_approval_pieces import desk_for, held_ctx, stores_with_agents

from broker.approvals.a2a import A2aApprovals, ApprovalTasks
from broker.approvals.stages import RequireApproval
from broker.errors import (
    ApprovalDeniedError,
    ApprovalNotUsableError,
    ApprovalPendingError,
    TaskNotFoundError,
)
from broker.protocols.a2a.operations import SEND_MESSAGE, SEND_STREAMING_MESSAGE, Operation
from broker.protocols.a2a.reading import Reading
from broker.types import Binding, MediationContext, Reply, StreamReply

AGENT_TASK = {
    "id": "agent-T", "contextId": "agent-C",
    "status": {"state": "TASK_STATE_INPUT_REQUIRED", "message": {
        "messageId": "q1", "role": "ROLE_AGENT", "taskId": "agent-T", "contextId": "agent-C",
        "parts": [{"text": "which table?"}]}},
}  # fmt: skip


async def approved_and_forwarded(answer: dict[str, Any] | None = None) -> tuple[A2aApprovals, str]:
    """A held call from alice, approved and forwarded; the agent answered ``answer``."""
    stores = await stores_with_agents()
    desk = desk_for(stores)
    approvals = A2aApprovals(desk, stores.task_routes, 15)

    async def resume(forwarded: MediationContext) -> Reply:
        record = await desk.store.get(forwarded.approval_id)
        assert record is not None
        await desk.consume(forwarded.approval_id, record.digest)
        body = {"jsonrpc": "2.0", "id": 7, "result": {"task": answer or AGENT_TASK}}
        return Reply(200, msgspec.json.encode(body))

    approvals.resume = resume
    held = await RequireApproval[MediationContext](desk, approvals)(held_ctx(), Next())
    assert isinstance(held, Reply)
    approval = msgspec.json.decode(held.body)["result"]["task"]["id"]
    await desk.decide(approval, "oscar", True, "")
    await approvals.forward(approval)
    return approvals, approval


def follow_up(
    binding: Binding, approval: str, caller: str = "alice", op: Operation = SEND_MESSAGE
) -> MediationContext:
    """alice's reply on the broker's task, as the stages before the approval stage left it;
    with a field the broker does not know, which must reach the agent too."""
    message = {"messageId": "m2", "role": "ROLE_USER", "taskId": approval,
               "contextId": approval, "parts": [{"text": "the users table"}],
               "referenceTaskIds": [approval, "other"],
               "x-unknown": {"kept": [1, 2.5, None]}}  # fmt: skip
    params = {"message": message, "configuration": {"historyLength": 3}}
    made = ctx(caller=caller, target="researcher", operation=op)
    made.binding = binding
    if binding == "jsonrpc":
        made.body = msgspec.json.encode({"jsonrpc": "2.0", "id": 8, "method": op.name,
                                         "params": params})
        made.params = msgspec.Raw(msgspec.json.encode(params))
        made.jsonrpc_id = msgspec.Raw(b"8")
    else:
        made.body = msgspec.json.encode(params)
    made.task_id = approval
    made.reading = Reading(task_id=approval, named_tasks=(approval,), context_id=approval)
    return made


def sent_message(seen: MediationContext) -> dict[str, Any]:
    document = msgspec.json.decode(seen.body)
    params = document["params"] if seen.binding == "jsonrpc" else document
    if seen.binding == "jsonrpc":
        assert msgspec.json.decode(seen.params) == params  # type: ignore[arg-type]
        assert document["id"] == 8 and document["method"] == seen.operation.name  # type: ignore[union-attr]
    assert params["configuration"] == {"historyLength": 3}
    return dict(params["message"])


@pytest.mark.parametrize("binding", ["jsonrpc", "rest"])
async def test_a_reply_on_the_brokers_task_reaches_the_agents_task_and_is_answered_as_the_brokers(
    binding: Binding,
) -> None:
    approvals, approval = await approved_and_forwarded()
    agent_answer = {"task": {**AGENT_TASK, "status": {"state": "TASK_STATE_COMPLETED"}}}
    wire = {"jsonrpc": "2.0", "id": 8, "result": agent_answer} if binding == "jsonrpc" else (
        agent_answer)
    call_next = Next(Reply(200, msgspec.json.encode(wire)))
    asked = follow_up(binding, approval)
    reply = await ApprovalTasks(approvals)(asked, call_next)
    [seen] = call_next.seen
    message = sent_message(seen)
    assert message["taskId"] == "agent-T" and message["contextId"] == "agent-C"
    assert message["x-unknown"] == {"kept": [1, 2.5, None]}
    assert message["referenceTaskIds"] == ["agent-T", "other"]
    assert message["parts"] == [{"text": "the users table"}]
    assert seen.task_id == "agent-T" and seen.approval_task == approval  # the audit names both
    assert isinstance(reply, Reply)
    shown = msgspec.json.decode(reply.body)
    task = (shown["result"] if binding == "jsonrpc" else shown)["task"]
    assert task["id"] == approval and task["contextId"] == approval
    assert "agent-T" not in reply.body.decode() and "agent-C" not in reply.body.decode()


@pytest.mark.parametrize("binding", ["jsonrpc", "rest"])
async def test_a_streamed_reply_shows_every_event_under_the_brokers_task(binding: Binding) -> None:
    approvals, approval = await approved_and_forwarded()
    update = {"statusUpdate": {"taskId": "agent-T", "contextId": "agent-C",
                               "status": {"state": "TASK_STATE_COMPLETED"}}}
    artifact = {"artifactUpdate": {"taskId": "agent-T", "contextId": "agent-C",
                                   "artifact": {"artifactId": "a1", "parts": [{"text": "ok"}]}}}

    def frame(event: dict[str, Any]) -> bytes:
        body = {"jsonrpc": "2.0", "id": 8, "result": event} if binding == "jsonrpc" else event
        return b"data: " + msgspec.json.encode(body) + b"\r\n\r\n"

    call_next = Next(stream_of(b": keep-alive\r\n\r\n", frame(artifact), frame(update)))
    answer = await ApprovalTasks(approvals)(
        follow_up(binding, approval, op=SEND_STREAMING_MESSAGE), call_next
    )
    assert isinstance(answer, StreamReply)
    events = [event async for event in answer.events]
    assert events[0] == b": keep-alive\r\n\r\n"
    for event in events[1:]:
        assert event.startswith(b"data: ") and event.endswith(b"\r\n\r\n")
        data = msgspec.json.decode(event[6:])
        member = next(iter((data["result"] if binding == "jsonrpc" else data).values()))
        assert member["taskId"] == approval and member["contextId"] == approval
    assert sent_message(call_next.seen[0])["taskId"] == "agent-T"


async def test_a_context_the_caller_named_itself_is_left_as_it_is() -> None:
    approvals, approval = await approved_and_forwarded()
    record = await approvals.desk.store.get(approval)
    assert record is not None and record.agent_context == "agent-C"  # the broker showed its own
    asked = follow_up("jsonrpc", approval)
    asked.reading = Reading(task_id=approval, named_tasks=(approval,), context_id="ctx-mine")
    document = msgspec.json.decode(asked.body)
    document["params"]["message"]["contextId"] = "ctx-mine"
    asked.body = msgspec.json.encode(document)
    call_next = Next()
    await ApprovalTasks(approvals)(asked, call_next)
    assert sent_message(call_next.seen[0])["contextId"] == "ctx-mine"


async def test_a_reply_before_the_approved_call_was_forwarded_or_from_another_caller_is_refused(
) -> None:
    stores = await stores_with_agents()
    desk = desk_for(stores)
    approvals = A2aApprovals(desk, stores.task_routes, 15)
    tasks = ApprovalTasks(approvals)
    held = await RequireApproval[MediationContext](desk, approvals)(held_ctx(), Next())
    approval = msgspec.json.decode(held.body)["result"]["task"]["id"]  # type: ignore[union-attr]
    call_next = Next()
    with pytest.raises(ApprovalPendingError):
        await tasks(follow_up("jsonrpc", approval), call_next)
    with pytest.raises(TaskNotFoundError):  # not hers: the same answer as no such task
        await tasks(follow_up("rest", approval, caller="planner"), call_next)
    with pytest.raises(TaskNotFoundError):
        await tasks(follow_up("rest", "approval-nope"), call_next)
    await desk.decide(approval, "oscar", False, "not today")
    with pytest.raises(ApprovalDeniedError):
        await tasks(follow_up("jsonrpc", approval), call_next)
    other = await RequireApproval[MediationContext](desk, approvals)(
        held_ctx(body=b'{"jsonrpc":"2.0","id":9}'), Next()
    )
    cancelled = msgspec.json.decode(other.body)["result"]["task"]["id"]  # type: ignore[union-attr]
    await desk.end(cancelled, "cancelled", "the caller cancelled")
    with pytest.raises(ApprovalNotUsableError):
        await tasks(follow_up("rest", cancelled), call_next)
    assert not call_next.called

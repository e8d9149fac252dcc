"""A unary answer leaves before its outcome record and its log line are made (decision 0106):
both run in the loop pass after the request's task yields, and neither is lost."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder
from broker.audit.trail import AuditTrail
from broker.errors import UpstreamTimeoutError
from broker.identity.keys import BrokerKeys
from broker.pipeline.stage import after_reply
from broker.stages.audit import AuditForward
from broker.stages.boundary import A2aWire, ErrorBoundary
from broker.types import MediationContext, Outcome, Reply
from testkit.audit_files import audit_bytes
from testkit.contexts import send_message_context

KEYS = BrokerKeys(Ed25519PrivateKey.generate())


async def _recorder(directory: Path) -> AuditRecorder:
    trail = await AuditTrail.open(FileAuditLog(directory, fsync=False), "r1", KEYS)
    return AuditRecorder(trail)


def _requests(directory: Path) -> list[dict[str, object]]:
    """The request records in the file, in order (checkpoints left out)."""
    records = map(json.loads, audit_bytes(directory / "audit-r1.jsonl").splitlines())
    return [record for record in records if record["kind"] == "request"]


async def test_after_reply_runs_once_the_running_task_step_is_over() -> None:
    ran: list[str] = []
    after_reply(ran.append, "late")
    ran.append("now")  # the rest of the step, where the edge writes the answer
    assert ran == ["now"]
    await asyncio.sleep(0)
    assert ran == ["now", "late"]


async def test_the_outcome_record_is_sealed_after_the_answer_is_returned(tmp_path: Path) -> None:
    recorder = await _recorder(tmp_path)
    assert recorder.trail is not None

    async def agent(ctx: MediationContext) -> Outcome:
        return Reply(200, b'{"result":{}}')

    reply = await AuditForward(recorder)(send_message_context(), agent)
    assert isinstance(reply, Reply) and reply.status == 200
    sealed = recorder.trail.chain.head.seq  # the decision (and any checkpoint) only
    await asyncio.sleep(0)
    assert recorder.trail.chain.head.seq == sealed + 1  # the outcome, one pass later
    await recorder.close()
    assert [r["detail"]["phase"] for r in _requests(tmp_path)] == ["forward", "outcome"]  # type: ignore[index]


async def test_a_failed_calls_outcome_is_recorded_after_the_refusal_too(tmp_path: Path) -> None:
    recorder = await _recorder(tmp_path)

    async def agent(ctx: MediationContext) -> Outcome:
        raise UpstreamTimeoutError

    ctx = send_message_context()
    with pytest.raises(UpstreamTimeoutError):
        await AuditForward(recorder)(ctx, agent)
    assert ctx.audited  # the boundary will not write a refusal record of its own
    await asyncio.sleep(0)
    await recorder.close()
    outcome = _requests(tmp_path)[-1]
    assert outcome["detail"] == {"binding": "jsonrpc", "phase": "outcome"}
    assert outcome["status"] == 504


async def test_the_access_log_line_follows_the_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = await _recorder(tmp_path)

    async def agent(ctx: MediationContext) -> Outcome:
        return Reply(200, b'{"result":{}}')

    boundary = ErrorBoundary[MediationContext](recorder, wire=A2aWire())
    with caplog.at_level(logging.INFO, logger="a2a_broker.access"):
        reply = await boundary(send_message_context(), agent)
        assert isinstance(reply, Reply) and reply.status == 200
        assert not [r for r in caplog.records if r.name == "a2a_broker.access"]
        await asyncio.sleep(0)
        lines = [r for r in caplog.records if r.name == "a2a_broker.access"]
    assert len(lines) == 1
    await recorder.close()


async def test_closing_the_recorder_records_the_outcomes_of_answered_calls(tmp_path: Path) -> None:
    recorder = await _recorder(tmp_path)

    async def agent(ctx: MediationContext) -> Outcome:
        return Reply(200, b'{"result":{}}')

    await AuditForward(recorder)(send_message_context(), agent)
    await recorder.close()  # at once, as a shutdown right after the last answer would
    records = [json.loads(line) for line in audit_bytes(tmp_path / "audit-r1.jsonl").splitlines()]
    outcome, closing = records[-2:]
    assert outcome["detail"]["phase"] == "outcome"
    # The checkpoint the trail seals as it closes covers the outcome: it came first.
    assert closing["kind"] == "checkpoint" and closing["detail"]["head_seq"] == outcome["seq"]

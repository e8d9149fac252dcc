"""The audit stage with ``[audit] durable_before = "reply"``: the request goes out once its
decision is written, and the answer waits for (and depends on) that record being durable."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import file_log
from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder
from broker.audit.trail import AuditTrail
from broker.audit.verify import verify_chain
from broker.errors import AuditUnavailableError
from broker.identity.keys import BrokerKeys
from broker.stages.audit import AuditForward
from broker.types import MediationContext, Outcome, Reply
from testkit.audit_files import audit_bytes
from testkit.contexts import send_message_context

KEYS = BrokerKeys(Ed25519PrivateKey.generate())


async def _recorder(directory: Path) -> AuditRecorder:
    trail = await AuditTrail.open(FileAuditLog(directory, staged=True), "r1", KEYS)
    return AuditRecorder(trail)


async def test_the_agent_works_while_the_decision_is_fsynced_and_the_answer_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = threading.Event()
    real = os.fdatasync

    def slow_disk(fd: int) -> None:
        assert disk.wait(10)
        real(fd)

    monkeypatch.setattr(file_log.os, "fdatasync", slow_disk)
    recorder = await _recorder(tmp_path)
    forwarded = asyncio.Event()

    async def agent(ctx: MediationContext) -> Outcome:
        # The decision is in the file (it survives a broker crash) before the request leaves.
        assert b'"phase":"forward"' in audit_bytes(tmp_path / "audit-r1.jsonl")
        forwarded.set()
        return Reply(200, b"{}")

    answer = asyncio.create_task(AuditForward(recorder)(send_message_context(), agent))
    await asyncio.wait_for(forwarded.wait(), 5)  # forwarded although the fsync has not returned
    await asyncio.sleep(0.05)
    assert not answer.done()  # the answer waits for the record to be durable
    disk.set()
    reply = await asyncio.wait_for(answer, 5)
    assert isinstance(reply, Reply) and reply.status == 200
    await recorder.close()


async def test_an_answer_whose_decision_cannot_be_made_durable_is_withheld(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_log.os, "fdatasync", disk_full)
    recorder = await _recorder(tmp_path)

    async def agent(ctx: MediationContext) -> Outcome:
        return Reply(200, b"{}")

    ctx = send_message_context()
    with pytest.raises(AuditUnavailableError):
        await AuditForward(recorder)(ctx, agent)
    assert ctx.audited  # its outcome record (the refusal) is on its way, not the boundary's
    monkeypatch.undo()
    await recorder.close()


@pytest.mark.parametrize("checkpoint_every", [1, 2, 3, 1000])
async def test_outcomes_queued_without_waiting_keep_the_chain_whole_across_checkpoints(
    tmp_path: Path, checkpoint_every: int
) -> None:
    """Decisions awaited and outcomes not, interleaved as requests do, with checkpoints falling
    on either: every record is stored once, in seal order, and the chain verifies."""
    trail = await AuditTrail.open(FileAuditLog(tmp_path), "r1", KEYS, checkpoint_every)
    recorder = AuditRecorder(trail)

    async def request(n: int) -> None:
        await recorder.record({"kind": "request", "request_id": f"q{n}"})
        recorder.record_soon({"kind": "request", "request_id": f"q{n}", "status": 200})

    for n in range(10):
        await request(n)
    await asyncio.gather(*(request(n) for n in range(10, 30)))
    await recorder.close()
    report = verify_chain(
        audit_bytes(tmp_path / "audit-r1.jsonl").splitlines(keepends=True),
        {KEYS.kid: KEYS.private_key.public_key()},
        newline_terminated=True,
    )
    assert report.ok, report.message
    lines = audit_bytes(tmp_path / "audit-r1.jsonl").splitlines()
    assert sum(b'"kind":"request"' in line for line in lines) == 60


async def test_an_outcome_that_cannot_be_written_is_logged_as_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trail = await AuditTrail.open(FileAuditLog(tmp_path), "r1", KEYS)
    recorder = AuditRecorder(trail)
    await recorder.record({"kind": "request", "request_id": "q0"})

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_log.os, "pwrite", disk_full)  # records are written in place
    recorder.record_soon({"kind": "request", "request_id": "q1"})
    for _ in range(100):
        if "audit record lost" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "audit record lost" in caplog.text and "q1" in caplog.text
    monkeypatch.undo()
    await recorder.record({"kind": "request", "request_id": "q2"})  # the chain goes on
    await recorder.close()
    lines = audit_bytes(tmp_path / "audit-r1.jsonl").splitlines()
    assert [b'"q0"' in lines[0], b'"q2"' in lines[1]] == [True, True]

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
from broker.errors import AuditUnavailableError
from broker.identity.keys import BrokerKeys
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.stages.audit import AuditForward
from broker.types import MediationContext, Outcome, Reply

KEYS = BrokerKeys(Ed25519PrivateKey.generate())


async def _body() -> bytes:
    return b"{}"


def _ctx() -> MediationContext:
    ctx = MediationContext("jsonrpc", "b", "POST", headers={}, read_body=_body, caller="a")
    ctx.operation = SEND_MESSAGE
    return ctx


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
        assert b'"phase":"forward"' in (tmp_path / "audit-r1.jsonl").read_bytes()
        forwarded.set()
        return Reply(200, b"{}")

    answer = asyncio.create_task(AuditForward(recorder)(_ctx(), agent))
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

    ctx = _ctx()
    with pytest.raises(AuditUnavailableError):
        await AuditForward(recorder)(ctx, agent)
    assert ctx.audited  # its outcome record (the refusal) is on its way, not the boundary's
    monkeypatch.undo()
    await recorder.close()

"""Records appended to a fsynced audit file, which writes them over zeros it keeps ahead
(decision 0074), read back exactly as sealed: while the file is open, once it is closed, and
after it is reopened and more are appended; in any mix of sizes, batches and record kinds
(durable, written), across many fills of a small chunk."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.audit import file_log
from broker.audit.file_log import FileAuditLog
from broker.audit.records import AuditRecord, encode_record
from broker.audit.sources import file_lines
from broker.audit.trail import AuditTrail
from broker.audit.verify import verify_chain
from broker.identity.keys import BrokerKeys

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
PUBLIC = {KEYS.kid: KEYS.private_key.public_key()}

# One step: (records in one gather, durable?, padding of each record).
steps = st.lists(
    st.tuples(st.integers(1, 6), st.booleans(), st.integers(0, 3000)), min_size=1, max_size=25
)


async def _append(directory: Path, plan: list[tuple[int, bool, int]]) -> list[AuditRecord]:
    log = FileAuditLog(directory)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=7)
    for count, durable, pad in plan:
        fields = {"kind": "request", "detail": {"pad": "z" * pad}}
        record = trail.record if durable else trail.record_written
        await asyncio.gather(*(record(fields) for _ in range(count)))
    await log.close()
    return [r async for r in FileAuditLog(directory).read("r1")]


async def _scenario(directory: Path, first: list[tuple[int, bool, int]],
                    second: list[tuple[int, bool, int]]) -> None:  # fmt: skip
    path = directory / "audit-r1.jsonl"
    records = await _append(directory, first)
    stored = [encode_record(r) + b"\n" for r in records]
    assert path.read_bytes() == b"".join(stored)  # closed: records only
    records = await _append(directory, second)  # reopened: goes on after them
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert path.read_bytes() == b"".join(encode_record(r) + b"\n" for r in records)
    assert [encode_record(r) + b"\n" for r in records][: len(stored)] == stored
    report = verify_chain(file_lines(path), PUBLIC, newline_terminated=True)
    assert report.ok and report.last_seq == len(records)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=steps, second=steps, chunk=st.sampled_from([1024, 4096, 16384]))
def test_appended_records_read_back_identically(
    first: list[tuple[int, bool, int]], second: list[tuple[int, bool, int]], chunk: int
) -> None:
    saved = file_log.ZERO_CHUNK, file_log.RECOVERY_SPAN
    file_log.ZERO_CHUNK, file_log.RECOVERY_SPAN = chunk, 3 * chunk
    try:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(_scenario(Path(directory), first, second))
    finally:
        file_log.ZERO_CHUNK, file_log.RECOVERY_SPAN = saved


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=steps, chunk=st.sampled_from([1024, 4096]))
def test_an_open_file_reads_back_its_records_up_to_the_zeros(
    plan: list[tuple[int, bool, int]], chunk: int
) -> None:
    saved = file_log.ZERO_CHUNK, file_log.RECOVERY_SPAN
    file_log.ZERO_CHUNK, file_log.RECOVERY_SPAN = chunk, 3 * chunk

    async def run(directory: Path) -> None:
        log = FileAuditLog(directory)
        trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=5)
        sealed: list[AuditRecord] = []
        for count, durable, pad in plan:
            fields = {"kind": "request", "detail": {"pad": "q" * pad}}
            record = trail.record if durable else trail.record_written
            await asyncio.gather(*(record(fields) for _ in range(count)))
        stored = [line async for line in log.read_raw("r1")]
        sealed = [r async for r in log.read("r1")]
        assert stored == [encode_record(r) for r in sealed]
        assert [line.rstrip(b"\n") for line in file_lines(directory / "audit-r1.jsonl")] == stored
        head = await log.head("r1")
        assert head is not None and head.seq == len(stored) == sealed[-1].seq
        await log.close()

    try:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(run(Path(directory)))
    finally:
        file_log.ZERO_CHUNK, file_log.RECOVERY_SPAN = saved

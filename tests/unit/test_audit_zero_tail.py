"""The zeros a fsynced audit file keeps after its records (decision 0074): every reader stops at
them, closing cuts them, and a crash-like tail (zeros, a torn record, pages of records never
fsynced after the zeros) is cut when the file is reopened, the chain going on from the last
whole record."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import file_log
from broker.audit.file_log import FileAuditLog
from broker.audit.records import decode_record, encode_record
from broker.audit.sources import file_lines
from broker.audit.trail import AuditTrail
from broker.audit.verify import averify_chain, verify_chain
from broker.identity.keys import BrokerKeys

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
PUBLIC = {KEYS.kid: KEYS.private_key.public_key()}


def small_chunks(monkeypatch: pytest.MonkeyPatch, chunk: int = 4096) -> int:
    monkeypatch.setattr(file_log, "ZERO_CHUNK", chunk)
    monkeypatch.setattr(file_log, "RECOVERY_SPAN", 3 * chunk)
    return chunk


async def raw(log: FileAuditLog, replica: str = "r1") -> list[bytes]:
    return [line async for line in log.read_raw(replica)]


async def test_an_open_file_has_zeros_after_its_records_and_every_reader_stops_there(
    tmp_path: Path,
) -> None:
    log = FileAuditLog(tmp_path)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    sealed = [await trail.record({"kind": "request", "detail": {"n": n}}) for n in range(5)]
    path = tmp_path / "audit-r1.jsonl"
    data = path.read_bytes()
    records = b"".join(encode_record(r) + b"\n" for r in sealed)
    assert data.startswith(records) and data[len(records) :] == bytes(len(data) - len(records))
    assert len(data) - len(records) >= file_log.ZERO_CHUNK // 2
    assert await raw(log) == [encode_record(r) for r in sealed]  # read_raw (export, console)
    assert await log.head("r1") == (5, sealed[-1].hash)
    assert list(file_lines(path)) == [encode_record(r) + b"\n" for r in sealed]  # verify
    report = verify_chain(file_lines(path), PUBLIC, newline_terminated=True)
    assert report.ok and report.last_seq == 5
    await log.close()
    assert path.read_bytes() == records  # closing cuts the zeros


async def test_a_file_of_an_unsynced_log_has_no_zeros(tmp_path: Path) -> None:
    log = FileAuditLog(tmp_path, fsync=False)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    record = await trail.record({"kind": "request"})
    assert (tmp_path / "audit-r1.jsonl").read_bytes() == encode_record(record) + b"\n"
    await log.close()


async def test_zero_ahead_off_appends_so_a_follower_sees_each_record_as_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[audit] zero_ahead = false``: fsynced, but the file is records only and grows with them
    (what a log shipper following the file needs); a file a zeros-writing broker left behind
    (its zero tail after a crash) is still cut on reopening."""
    chunk = small_chunks(monkeypatch)
    path = tmp_path / "audit-r1.jsonl"
    zeros_log = FileAuditLog(tmp_path)
    first = await (await AuditTrail.open(zeros_log, "r1", KEYS, 1000)).record({"kind": "request"})
    assert len(path.read_bytes()) > len(encode_record(first)) + chunk // 2
    os.close(zeros_log._files["r1"].fd)  # a crash: nothing cuts the zeros
    zeros_log._files.clear()
    log = FileAuditLog(tmp_path, zeros=False)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    sealed = [first]
    for n in range(3):
        sealed.append(await trail.record({"kind": "request", "detail": {"n": n}}))
        assert path.read_bytes() == b"".join(encode_record(r) + b"\n" for r in sealed)
    await log.close()
    assert verify_chain(file_lines(path), PUBLIC, newline_terminated=True).last_seq == 4


async def crashed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torn: bytes) -> Path:
    """Three durable records, then what a machine crash can leave of records never fsynced:
    ``torn`` (part of the next one), zeros, a page of later records, zeros."""
    chunk = small_chunks(monkeypatch)
    log = FileAuditLog(tmp_path)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    lost = []
    for n in range(6):
        await trail.record({"kind": "request", "detail": {"n": n}})
    await log.close()
    path = tmp_path / "audit-r1.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    durable, lost = b"".join(lines[:3]), lines[3:]
    debris = b"".join(lost[1:])
    tail = torn + bytes(chunk - len(torn)) + debris + bytes(2 * chunk)
    path.write_bytes(durable + tail)
    return path


@pytest.mark.parametrize("torn", [b"", b'{"caller":"","chain":[],"cost_m'])
async def test_a_crash_like_zero_tail_is_cut_on_reopening_and_the_chain_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torn: bytes
) -> None:
    path = await crashed_file(tmp_path, monkeypatch, torn)
    reader = FileAuditLog(tmp_path)
    assert [decode_record(line).seq for line in await raw(reader)] == [1, 2, 3]
    assert (await reader.head("r1") or (0, ""))[0] == 3
    before = verify_chain(file_lines(path), PUBLIC, newline_terminated=True)
    assert before.kind == "truncated" if torn else before.ok  # as a torn last line always was
    assert (await averify_chain(reader.read_raw("r1"), PUBLIC)).last_seq == 3
    log = FileAuditLog(tmp_path)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    assert (await trail.record({"kind": "request", "detail": {"n": 9}})).seq == 4
    await log.close()
    report = verify_chain(file_lines(path), PUBLIC, newline_terminated=True)
    assert report.ok and report.last_seq == 4
    assert b"\0" not in path.read_bytes()


async def test_a_whole_record_cut_off_by_zeros_without_its_newline_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_chunks(monkeypatch)
    log = FileAuditLog(tmp_path)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    for _ in range(2):
        await trail.record({"kind": "request"})
    await log.close()
    path = tmp_path / "audit-r1.jsonl"
    path.write_bytes(path.read_bytes()[:-1] + bytes(5000))
    assert (await FileAuditLog(tmp_path).head("r1") or (0, ""))[0] == 2
    log = FileAuditLog(tmp_path)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    assert (await trail.record({"kind": "request"})).seq == 3
    await log.close()
    assert verify_chain(file_lines(path), PUBLIC, newline_terminated=True).ok


async def test_durable_records_always_reach_within_the_recovery_span_of_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a reopening writer relies on: at any moment, the records covered by a completed
    fsync reach past ``size - 2.5 chunks``, so the first NUL lies in the span it reads."""
    chunk = small_chunks(monkeypatch, 2048)
    log = FileAuditLog(tmp_path, staged=False)
    path = tmp_path / "audit-r1.jsonl"
    durable = 0
    real = os.fdatasync
    worst = 0
    writers: list[file_log._ReplicaFile] = []

    def disk(fd: int) -> None:
        nonlocal durable, worst
        writers.extend(log._files.values())  # the log forgets them as it closes
        end = writers[0]._end
        worst = max(worst, path.stat().st_size - durable)
        real(fd)
        durable = max(durable, end)

    monkeypatch.setattr(file_log.os, "fdatasync", disk)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=50)
    for n in range(60):
        if n % 3:
            await trail.record_written({"kind": "request", "detail": {"pad": "x" * (n * 37)}})
        else:
            await asyncio.gather(*(trail.record({"kind": "request"}) for _ in range(n % 7 + 1)))
    await log.close()
    assert chunk < worst <= 2.5 * chunk
    report = verify_chain(file_lines(path), PUBLIC, newline_terminated=True)
    assert report.ok and b"\0" not in path.read_bytes()


async def test_a_failed_fsync_cuts_the_zeros_and_the_next_fill_waits_for_a_durable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_chunks(monkeypatch)
    log = FileAuditLog(tmp_path)
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=1000)
    await trail.record({"kind": "request"})
    real = os.fdatasync

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_log.os, "fdatasync", disk_full)
    with pytest.raises(Exception, match="No space"):
        await trail.record({"kind": "request"})
    path = tmp_path / "audit-r1.jsonl"
    assert b"\0" not in path.read_bytes()  # cut back to the last durable record
    monkeypatch.setattr(file_log.os, "fdatasync", real)
    for _ in range(3):
        await trail.record({"kind": "request", "detail": {"pad": "y" * 3000}})
    assert await raw(log) == [line.rstrip(b"\n") for line in file_lines(path)]
    await log.close()
    report = verify_chain(file_lines(path), PUBLIC, newline_terminated=True)
    assert report.ok and report.last_seq == 4  # the refused record left no gap

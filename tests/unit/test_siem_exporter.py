"""The exporter against a real FileAuditLog and real receivers: outages of the sink lose and
repeat nothing, a restarted exporter resumes from its saved position, and the one documented
window (a crash between the sink's acknowledgement and the position save) re-sends one batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from test_siem_sinks import HEC_TOKEN, WAIT_S, HecReceiver, SyslogReceiver

from broker.audit.export import (
    Exporter,
    ExportItem,
    FilePositionStore,
    HecSink,
    PositionStore,
    Sink,
    SinkUnavailableError,
    SyslogSink,
)
from broker.audit.file_log import FileAuditLog
from broker.audit.records import AuditRecord, build_record, with_hash

REPLICAS = ("r1", "r2")


def fast_exporter(log: FileAuditLog, sink: Sink, positions: PositionStore) -> Exporter:
    """An exporter with small batches and short waits, so outages play out in milliseconds."""
    return Exporter(
        log, sink, positions,
        batch_size=7, max_backoff_s=0.1, initial_backoff_s=0.01, poll_interval_s=0.02,
    )  # fmt: skip


def file_names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


class ChainWriter:
    """Appends linked records (seq 1, 2, ... with prev = previous hash) to a replica's chain."""

    def __init__(self, log: FileAuditLog, replica: str) -> None:
        self.log, self.replica = log, replica
        self.seq, self.prev = 0, ""
        self.hashes: list[str] = []

    async def append(self, count: int) -> None:
        records: list[AuditRecord] = []
        for _ in range(count):
            self.seq += 1
            record = with_hash(
                build_record({
                    "seq": self.seq, "ts_us": 1_767_225_600_000_000 + self.seq,
                    "replica": self.replica, "kind": "request", "operation": "SendMessage",
                    "caller": "planner", "target": "weather", "decision": "allow",
                    "status": 200, "prev": self.prev,
                })
            )  # fmt: skip
            self.prev = record.hash
            self.hashes.append(record.hash)
            records.append(record)
        await self.log.append(records)


@pytest.fixture
async def audit_log(tmp_path: Path) -> AsyncIterator[FileAuditLog]:
    log = FileAuditLog(tmp_path / "audit", fsync=False)
    yield log
    await log.close()


@pytest.fixture
def writers(audit_log: FileAuditLog) -> dict[str, ChainWriter]:
    return {replica: ChainWriter(audit_log, replica) for replica in REPLICAS}


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state owned by several parties
            await asyncio.sleep(0.01)


async def write_continuously(writers: dict[str, ChainWriter], rounds: int) -> None:
    """The broker's traffic: a few records per replica every few milliseconds."""
    for _ in range(rounds):
        for writer in writers.values():
            await writer.append(3)
        await asyncio.sleep(0.005)


# --- the key property: a sink outage loses and repeats nothing --------------------------------


@pytest.mark.parametrize("kind", ["hec", "syslog-graceful", "syslog-abrupt"])
async def test_a_sink_stopped_mid_export_receives_every_record_once_in_order(
    kind: str, audit_log: FileAuditLog, writers: dict[str, ChainWriter], tmp_path: Path
) -> None:
    receiver: Any
    if kind == "hec":
        receiver = HecReceiver()
        await receiver.start()
        sink: Sink = HecSink(receiver.url, HEC_TOKEN, timeout_s=1.0)
    else:
        receiver = SyslogReceiver()
        await receiver.start()
        sink = SyslogSink("127.0.0.1", receiver.port, timeout_s=1.0)
    positions = FilePositionStore(tmp_path / "positions.json")
    exporter = fast_exporter(audit_log, sink, positions)
    exporter.start()
    traffic = asyncio.create_task(write_continuously(writers, rounds=60))
    try:
        await until(lambda: len(receiver.seqs("r1")) >= 20)
        if kind == "hec":
            await receiver.stop()
        else:
            await receiver.stop(graceful=kind == "syslog-graceful")
        received_at_stop = {r: len(receiver.seqs(r)) for r in REPLICAS}
        await asyncio.sleep(0.4)  # the sink is down while the broker keeps writing
        for replica in REPLICAS:
            # The position never runs ahead of what the sink holds.
            saved = await FilePositionStore(tmp_path / "positions.json").load(sink.name, replica)
            assert saved == len(receiver.seqs(replica)) == received_at_stop[replica]
        await receiver.start()  # same port
        await traffic
        await until(lambda: all(len(receiver.seqs(r)) >= writers[r].seq for r in REPLICAS))
        await asyncio.sleep(0.1)  # room for a duplicate to show up
    finally:
        traffic.cancel()
        await exporter.stop()
        await receiver.stop()
    for replica, writer in writers.items():
        assert receiver.seqs(replica) == list(range(1, writer.seq + 1))
        assert await positions.load(sink.name, replica) == writer.seq
    assert len(receiver.seqs("r1")) > received_at_stop["r1"], "the outage was mid-export"


# --- resuming ---------------------------------------------------------------------------------


async def test_a_restarted_exporter_resumes_without_resending_acknowledged_batches(
    audit_log: FileAuditLog, writers: dict[str, ChainWriter], tmp_path: Path
) -> None:
    receiver = HecReceiver()
    await receiver.start()
    path = tmp_path / "positions.json"
    try:
        await writers["r1"].append(20)
        first = fast_exporter(audit_log, HecSink(receiver.url, HEC_TOKEN), FilePositionStore(path))
        assert await first.export_pass() == 20
        await first.stop()
        await writers["r1"].append(5)
        await writers["r2"].append(4)
        second = fast_exporter(audit_log, HecSink(receiver.url, HEC_TOKEN), FilePositionStore(path))
        second.start()
        await until(lambda: len(receiver.seqs("r1")) == 25 and len(receiver.seqs("r2")) == 4)
        await second.stop()
    finally:
        await receiver.stop()
    assert receiver.seqs("r1") == list(range(1, 26))
    assert receiver.seqs("r2") == [1, 2, 3, 4]
    assert file_names(tmp_path) == ["audit", "positions.json"]


# --- retrying the same batch --------------------------------------------------------------------


class FlakySink(Sink):
    """Refuses the first ``failures`` sends; records every batch it was offered."""

    def __init__(self, failures: int, *, partial: int = 0) -> None:
        super().__init__("flaky")
        self.failures, self.partial = failures, partial
        self.offered: list[list[int]] = []
        self.accepted: list[int] = []

    async def send(self, batch: list[ExportItem]) -> None:
        self.offered.append([item.seq for item in batch])
        if self.failures:
            self.failures -= 1
            self.accepted.extend(item.seq for item in batch[: self.partial])
            raise SinkUnavailableError("down", delivered=self.partial)
        self.accepted.extend(item.seq for item in batch)


async def test_a_refused_batch_is_retried_unchanged_with_backoff(
    audit_log: FileAuditLog, writers: dict[str, ChainWriter], tmp_path: Path
) -> None:
    await writers["r1"].append(10)
    sink = FlakySink(failures=3)
    exporter = fast_exporter(audit_log, sink, FilePositionStore(tmp_path / "p.json"))
    assert await exporter.export_pass() == 10
    assert sink.offered[:4] == [[1, 2, 3, 4, 5, 6, 7]] * 4
    assert sink.accepted == list(range(1, 11))


async def test_a_partly_delivered_batch_moves_the_position_past_the_delivered_part(
    audit_log: FileAuditLog, writers: dict[str, ChainWriter], tmp_path: Path
) -> None:
    await writers["r1"].append(7)
    sink = FlakySink(failures=1, partial=3)
    exporter = fast_exporter(audit_log, sink, FilePositionStore(tmp_path / "p.json"))
    await exporter.export_pass()
    assert sink.offered == [[1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7]]
    assert sink.accepted == list(range(1, 8))


# --- the documented limit: a crash between acknowledgement and save ----------------------------


class StuckSaves(PositionStore):
    """A position store whose saves never complete (the process dies before they do)."""

    def __init__(self, inner: PositionStore) -> None:
        self.inner = inner

    async def load(self, sink: str, replica: str) -> int:
        return await self.inner.load(sink, replica)

    async def save(self, sink: str, replica: str, seq: int) -> None:
        await asyncio.Event().wait()


async def test_a_crash_between_ack_and_save_resends_that_batch_once_with_the_same_ids(
    audit_log: FileAuditLog, writers: dict[str, ChainWriter], tmp_path: Path
) -> None:
    receiver = HecReceiver()
    await receiver.start()
    path = tmp_path / "positions.json"
    try:
        await writers["r1"].append(10)
        doomed = fast_exporter(
            audit_log, HecSink(receiver.url, HEC_TOKEN), StuckSaves(FilePositionStore(path))
        )
        doomed.start()
        await until(lambda: len(receiver.seqs()) == 7)
        await doomed.stop(timeout_s=0.2)  # "crash": cancelled while saving
        survivor = fast_exporter(
            audit_log, HecSink(receiver.url, HEC_TOKEN), FilePositionStore(path)
        )
        assert await survivor.export_pass() == 10
        await survivor.stop()
    finally:
        await receiver.stop()
    assert receiver.seqs() == [*range(1, 8), *range(1, 11)]
    ids = [event["fields"]["record_hash"] for event in receiver.events]
    assert len(set(ids)) == 10  # the copies carry the same ids: the SIEM can drop them
    assert set(ids) == set(writers["r1"].hashes)


async def test_stop_ends_an_exporter_waiting_on_a_dead_sink_promptly(
    audit_log: FileAuditLog, writers: dict[str, ChainWriter], tmp_path: Path
) -> None:
    await writers["r1"].append(3)
    sink = FlakySink(failures=10**6)
    exporter = Exporter(
        audit_log, sink, FilePositionStore(tmp_path / "p.json"), batch_size=5, max_backoff_s=30.0
    )
    exporter.start()
    await until(lambda: len(sink.offered) >= 2)
    async with asyncio.timeout(2.0):
        await exporter.stop()
    assert await FilePositionStore(tmp_path / "p.json").load("flaky", "r1") == 0

"""The AuditLog contract, run against every backend: an fsynced file folder and a Redis Stream
(standalone, on a cluster, and on a primary found through Sentinel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.chain import AuditChain
from broker.audit.file_log import FileAuditLog
from broker.audit.log import AuditChainGapError, AuditLog
from broker.audit.records import AuditRecord, ChainHead
from broker.audit.redis_log import RedisAuditLog
from broker.audit.trail import AuditTrail
from broker.audit.verify import averify_chain
from broker.identity.keys import BrokerKeys
from broker.settings import StoreSettings
from testkit.redis_process import REDIS_MODES, RedisMode

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
PUBLIC = {KEYS.kid: KEYS.private_key.public_key()}

LogFactory = Callable[[], AuditLog]


@pytest.fixture(params=["file", "file-staged", "redis", "redis-cluster", "redis-sentinel"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> LogFactory:
    """Opens a log on the same storage each call (as a restarted broker would)."""
    if request.param == "file-staged":  # [audit] durable_before = "reply"
        return lambda: FileAuditLog(tmp_path / "audit", staged=True)
    if request.param == "file":
        return lambda: FileAuditLog(tmp_path / "audit")
    make: Callable[[RedisMode], StoreSettings] = request.getfixturevalue("redis_store_settings")
    settings = make(REDIS_MODES[request.param])
    return lambda: RedisAuditLog(settings, settings.key_prefix)


@pytest.fixture
async def log(open_log: LogFactory) -> AsyncIterator[AuditLog]:
    opened = open_log()
    try:
        yield opened
    finally:
        await opened.close()


def event(n: int) -> dict[str, object]:
    return {"kind": "request", "caller": f"agent-{n % 3}", "status": 200, "detail": {"n": n}}


async def collect(log: AuditLog, replica: str | None, after_seq: int = 0) -> list[AuditRecord]:
    return [record async for record in log.read(replica, after_seq)]


async def test_records_read_back_in_the_order_appended(log: AuditLog) -> None:
    chain = AuditChain("r1", KEYS)
    sealed = [chain.seal(event(n)) for n in range(5)]
    await log.append(sealed[:2])
    await log.append(sealed[2:])
    assert await collect(log, "r1") == sealed
    assert await log.head("r1") == ChainHead(5, sealed[-1].hash)


async def test_read_after_seq(log: AuditLog) -> None:
    chain = AuditChain("r1", KEYS)
    sealed = [chain.seal(event(n)) for n in range(6)]
    await log.append(sealed)
    assert [r.seq for r in await collect(log, "r1", after_seq=4)] == [5, 6]
    assert await collect(log, "r1", after_seq=6) == []


async def test_an_unknown_replica_has_no_head_and_no_records(log: AuditLog) -> None:
    assert await log.head("nobody") is None
    assert await collect(log, "nobody") == []
    assert await log.replicas() == []


async def test_replicas_are_listed_and_merged_by_time(log: AuditLog) -> None:
    clock = iter(range(1000, 2000))
    chains = {name: AuditChain(name, KEYS, clock_us=lambda: next(clock)) for name in ("b", "a")}
    for n in range(6):
        chain = chains["a" if n % 2 else "b"]
        await log.append([chain.seal(event(n))])
    assert await log.replicas() == ["a", "b"]
    merged = await collect(log, None)
    assert [r.ts_us for r in merged] == sorted(r.ts_us for r in merged)
    assert [r.detail["n"] for r in merged] == list(range(6))


async def test_records_that_do_not_continue_the_chain_are_refused(log: AuditLog) -> None:
    chain = AuditChain("r1", KEYS)
    first, second, third = (chain.seal(event(n)) for n in range(3))
    await log.append([first])
    with pytest.raises(AuditChainGapError):
        await log.append([third])  # seq 2 is missing
    stale = AuditChain("r1", KEYS)  # a second writer starting over at seq 1
    with pytest.raises(AuditChainGapError):
        await log.append([stale.seal(event(9))])
    await log.append([second, third])
    assert [r.seq for r in await collect(log, "r1")] == [1, 2, 3]


async def test_a_new_trail_resumes_the_chain_after_a_restart(open_log: LogFactory) -> None:
    log = open_log()
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=3)
    for n in range(4):
        await trail.record(event(n))
    await trail.close()  # signs the tail: seq 5 is a checkpoint

    log = open_log()
    try:
        resumed = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=3)
        record = await resumed.record(event(4))
        assert record.seq == 7
        records = await collect(log, "r1")
        assert record.prev == records[-2].hash
        report = await averify_chain(log.read_raw("r1"), PUBLIC)
        assert report.ok, report
        assert report.last_seq == 7
    finally:
        await log.close()


async def test_concurrent_records_stay_contiguous_and_verify(log: AuditLog) -> None:
    trail = await AuditTrail.open(log, "r1", KEYS, checkpoint_every=25)
    sealed = await asyncio.gather(*(trail.record(event(n)) for n in range(300)))
    assert sorted(r.seq for r in sealed) == [r.seq for r in sealed]  # sealed in call order
    records = await collect(log, "r1")
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert sum(r.kind == "checkpoint" for r in records) == 12
    report = await averify_chain(log.read_raw("r1"), PUBLIC)
    assert report.ok, report
    assert report.checkpoints == 12

"""What the audit chain costs: sealing a record, appending it durably, verifying a log.

    .venv/bin/python benchmarks/audit_costs.py [--records N] [--dir PATH] [--redis-url URL]

Prints a table. Seal = validate + canonical JSON + SHA-256 + link (a checkpoint signature every
1000 records amortised in). Append = ``AuditTrail.record`` on a ``FileAuditLog`` with fsync
(``--dir`` picks the disk; default a temp folder), sequential and with 64 requests in flight
(group commit shares one fsync among them); with ``--redis-url``, the same on a Redis Stream.
Verify = ``verify_chain`` over a file of N records (default 1,000,000), one core.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.chain import AuditChain
from broker.audit.file_log import FileAuditLog
from broker.audit.log import AuditLog
from broker.audit.records import build_record, encode_record, with_hash
from broker.audit.redis_log import RedisAuditLog
from broker.audit.trail import AuditTrail
from broker.audit.verify import verify_chain
from broker.identity.keys import BrokerKeys

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
EVENT: dict[str, Any] = {
    "kind": "request", "request_id": "0b8f3c1e-5d7a-4e59-9a1f-3f2b7c9d8e10", "caller": "planner",
    "chain": ["orchestrator", "planner"], "tree": "task-7f3a", "target": "researcher",
    "operation": "SendMessage", "skill": "web-search", "decision": "allow", "reason": "",
    "rule": "p, planner, researcher, SendMessage, web-search, allow", "status": 200,
    "latency_us": 48_210, "tokens_in": 512, "tokens_out": 1024, "cost_micro": 3_100,
    "request_digest": "sha256:" + "a" * 64, "response_digest": "sha256:" + "b" * 64,
    "detail": {"depth": 2, "binding": "jsonrpc"},
}


def per_op_us(run: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def seal_costs(number: int) -> list[tuple[str, str]]:
    chain = AuditChain("bench", KEYS, checkpoint_every=1000, checkpoint_interval_s=1e9)
    unhashed = build_record({**EVENT, "seq": 1, "ts_us": 1, "replica": "bench"})
    record = with_hash(unhashed)
    timings = {
        "canonical JSON + SHA-256 of a record": lambda: with_hash(unhashed),
        "encode a sealed record (the stored line)": lambda: encode_record(record),
        "seal (validate, hash, link; a signed checkpoint per 1000)":
            lambda: chain.seal_with_checkpoint(EVENT),
    }
    return [(name, f"{per_op_us(run, number):.1f} µs") for name, run in timings.items()]


async def append_rate(log: AuditLog, total: int, in_flight: int) -> float:
    trail = await AuditTrail.open(log, f"bench-{in_flight}-{time.time_ns()}", KEYS)
    semaphore = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with semaphore:
            await trail.record(EVENT)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.perf_counter() - start)


async def append_costs(
    name: str, open_log: Callable[[], AuditLog], total: int
) -> list[tuple[str, str]]:
    rows = []
    for in_flight in (1, 64):
        log = open_log()
        try:
            rate = await append_rate(log, total if in_flight > 1 else total // 4, in_flight)
        finally:
            await log.close()
        rows.append((f"append, {name}, {in_flight} in flight", f"{rate:,.0f} records/s"))
    return rows


def verify_cost(directory: Path, records: int) -> list[tuple[str, str]]:
    path = directory / "audit-verify.jsonl"
    chain = AuditChain("verify", KEYS, checkpoint_every=1000, checkpoint_interval_s=1e9)
    with path.open("wb") as file:
        for _ in range(records):
            file.writelines(encode_record(r) + b"\n" for r in chain.seal_with_checkpoint(EVENT))
    size = path.stat().st_size
    start = time.perf_counter()
    with path.open("rb") as file:
        report = verify_chain(file, {KEYS.kid: KEYS.private_key.public_key()},
                              newline_terminated=True)
    elapsed = time.perf_counter() - start
    assert report.ok, report
    return [(f"verify {report.lines:,} lines ({size / 1e6:,.0f} MB)",
             f"{report.lines / elapsed:,.0f} records/s ({elapsed:.1f} s)")]


async def measure(args: argparse.Namespace, directory: Path) -> list[tuple[str, str]]:
    rows = seal_costs(20_000)
    rows += await append_costs("file + fdatasync", lambda: FileAuditLog(directory), 4000)
    rows += await append_costs("file, no fsync", lambda: FileAuditLog(directory, fsync=False),
                               20_000)
    if args.redis_url:
        prefix = f"bench-{time.time_ns()}"
        rows += await append_costs("Redis Stream", lambda: RedisAuditLog(args.redis_url, prefix),
                                   20_000)
    return rows + verify_cost(directory, args.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = asyncio.run(measure(args, Path(tmp)))
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  cost")
    print(f"{'-' * width}  ----")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

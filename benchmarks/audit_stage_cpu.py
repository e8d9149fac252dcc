"""CPU and wait of the audit stage's file work per request, in process (decision 0074).

    .venv/bin/python -m benchmarks.audit_stage_cpu [--number N] [--concurrency C] [--dir PATH]

C workers each, N/C times: ``AuditTrail.record`` of a request's decision on a fsynced
``FileAuditLog`` (what the request waits for before it is forwarded), then the outcome
``record_written_nowait`` (written now, durable with the next fsync), one loop turn apart, as a
request records them. Prints CPU µs per request (``time.process_time``: the fsync thread
included), wall µs per request, and the p50/p99 of the decision's wait. Run it against another
branch's ``broker/`` (``PYTHONPATH``) in alternating processes to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.file_log import FileAuditLog
from broker.audit.trail import AuditTrail
from broker.identity.keys import BrokerKeys

FIELDS = {
    "kind": "request", "request_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "caller": "caller",
    "chain": ["caller"], "tree": "t" * 26, "target": "target", "operation": "SendMessage",
    "decision": "allow", "status": 0, "latency_us": 123, "request_digest": "sha256:" + "a" * 64,
    "detail": {"phase": "forward", "binding": "jsonrpc", "token.jti": "j" * 22,
               "token.exp": 1700000000, "policy_version": "v1"},
}  # fmt: skip


async def measure(
    number: int, concurrency: int, directory: Path
) -> tuple[float, float, list[float]]:
    log = FileAuditLog(directory)
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    trail = await AuditTrail.open(log, "stage", keys, 1000, 60.0)
    waits: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        await trail.record(FIELDS)
        waits.append(time.perf_counter() - started)
        await asyncio.sleep(0)  # the request is forwarded and answered
        trail.record_written_nowait(FIELDS)
        await asyncio.sleep(0)

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(300 // concurrency) for _ in range(concurrency)))
    waits.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(number // concurrency) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await log.close()
    done = len(waits)
    return cpu / done * 1e6, wall / done * 1e6, sorted(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where (default: a temp folder)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="audit-stage-", dir=args.dir))
    try:
        cpu, wall, waits = asyncio.run(measure(args.number, args.concurrency, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    p50, p99 = waits[len(waits) // 2] * 1e6, waits[int(len(waits) * 0.99)] * 1e6
    print(f"c={args.concurrency}: CPU {cpu:.0f} µs per request, wall {wall:.0f} µs; "
          f"decision waits p50 {p50:.0f} µs, p99 {p99:.0f} µs")  # fmt: skip


if __name__ == "__main__":
    main()

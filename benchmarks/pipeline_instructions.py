"""Instructions per request of the metered A2A pipeline in process, counted by callgrind. The
machine's load and the timing of the run do not move this count.

    .venv/bin/python -m benchmarks.pipeline_instructions [--concurrency 16] [--broker-ref main]
        [--audit off|written|fsync]

The pipeline is the A2A chain of ``benchmarks.pipeline_cpu`` on the memory store, with the
caller metered by a calls budget as in scenario (e), in front of the fake transport. There are
no sockets. Under callgrind, ``benchmarks.hop_cpu``'s count on Redis varies by ±10% from run
to run, because how calls fall into round trips depends on timing; nothing here does. The
script runs twice under ``valgrind --tool=callgrind``: 160 and 640 requests, each after the
same warm-up. The difference of the two totals, divided by 480, is what one request costs;
start-up and warm-up cancel out. ``--broker-ref``: count the ``broker/`` of that commit
(``git archive``) instead of the worktree's. A change worth 1% of the count shows (decision
0085). ``--audit``: record each request to a file audit log in a scratch directory, as
``benchmarks.pipeline_cpu --audit-dir`` does: ``written`` with the fsync off (the count then
depends on nothing timed: what sealing, encoding and writing the records cost), ``fsync`` with
it on (how many fsyncs run on the loop or the file's thread then depends on the disk's timing;
decision 0091).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.hop_cpu import CALLS
from benchmarks.pipeline_cpu import bench_parts, sends
from benchmarks.targets import snapshot_broker
from broker.audit.file_log import FileAuditLog
from broker.audit.trail import AuditTrail
from broker.identity.keys import BrokerKeys
from broker.pipeline.a2a import a2a_stages
from broker.pipeline.stage import fold
from broker.settings import ServerSettings, Settings
from broker.stores.memory import MemoryBackend
from testkit.procs import REPO_ROOT

WARM_UP = 208
NUMBERS = (160, 640)
AUDITS = ("off", "written", "fsync")
Audit = Literal["off", "written", "fsync"]


async def run(number: int, concurrency: int, audit: Audit = "off", audit_dir: str = "") -> int:
    """``WARM_UP`` requests, then ``number``, ``concurrency`` at a time; how many budget
    reservations the caller's calls made (each request one, all settled). ``audit`` other than
    "off": each request's records go to a file log in ``audit_dir`` (fsynced with "fsync")."""
    settings = Settings(server=ServerSettings(public_url="http://broker.test"), budgets=CALLS)
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    trail = None
    if audit != "off":
        log = FileAuditLog(audit_dir, fsync=audit == "fsync")
        trail = await AuditTrail.open(log, "pipeline-instr", keys)
    parts, _ = await bench_parts(settings, MemoryBackend().stores(), keys, trail=trail)
    call = fold(a2a_stages(parts))
    await sends(call, WARM_UP, concurrency)
    gc.collect()
    await sends(call, number, concurrency)
    await asyncio.sleep(0)  # a settle queued behind the last answer lands
    (status,) = await parts.stores.budgets.status(parts.budget_scopes.for_status("caller", (), ""))
    await parts.audit.close()
    return status.used


def counted_totals(
    module: str,
    numbers: tuple[int, int],
    concurrency: int,
    home: Path,
    scratch: Path,
    *options: str,
) -> tuple[int, int]:
    """Callgrind's totals of ``module``'s ``--run`` with each of ``numbers`` requests (run side
    by side, ``broker`` imported from ``home``, each with its own ``--audit-dir`` in
    ``scratch``)."""
    outs = [scratch / f"callgrind.{number}" for number in numbers]
    runs = []
    for number, out in zip(numbers, outs, strict=True):
        arguments = ["--run", str(number), "--concurrency", str(concurrency)]
        arguments += ["--audit-dir", str(out.parent / f"{out.name}.audit"), *options]
        runs.append(_counted(module, arguments, home, out))
    if any(process.wait() != 0 for process in runs):
        raise SystemExit("a counted run failed")
    low, high = (_totals(out) for out in outs)
    return low, high


def _counted(module: str, arguments: list[str], home: Path, out: Path) -> subprocess.Popen[bytes]:
    """``python -m module arguments`` under callgrind, importing ``broker`` from ``home``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "0"}
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
        "-m", module, *arguments,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=home, env=env, stderr=subprocess.DEVNULL)


def _totals(out: Path) -> int:
    found = re.search(r"^totals:\s+(\d+)", out.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--broker-ref", default="worktree", help="a git ref, or worktree")
    parser.add_argument(
        "--audit", choices=AUDITS, default="off", help="record to a file log (fsync off or on)"
    )
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the counted process
    parser.add_argument("--audit-dir", help=argparse.SUPPRESS)  # the counted process's log
    args = parser.parse_args()
    if args.run is not None:
        asyncio.run(run(args.run, args.concurrency, args.audit, args.audit_dir))
        return
    with tempfile.TemporaryDirectory(prefix="a2a-pipeline-instr-") as scratch:
        home = REPO_ROOT
        if args.broker_ref != "worktree":
            home = snapshot_broker(args.broker_ref, Path(scratch) / "tree")
        module = "benchmarks.pipeline_instructions"
        options = ("--audit", args.audit)
        low, high = counted_totals(module, NUMBERS, args.concurrency, home, Path(scratch), *options)
    per_request = (high - low) / (NUMBERS[1] - NUMBERS[0])
    print(f"broker {args.broker_ref} c={args.concurrency} audit {args.audit}: "
          f"{per_request / 1e6:.3f} M "
          f"instructions per request ({low} and {high} in all)")  # fmt: skip


if __name__ == "__main__":
    main()

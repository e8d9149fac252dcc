"""Instructions per request of the A2A audit stage alone, counted by callgrind (decision 0099).

    .venv/bin/python -m benchmarks.audit_stage_instructions [--concurrency 16] [--broker-ref main]

What the stage costs a forwarded request: ``AuditForward`` builds the decision record, has it
sealed and written to a file log (fsync off, so the count depends on nothing timed), lets the
request be answered, then has the outcome record sealed and queued. The contexts are real ones:
``benchmarks.pipeline_instructions``' pipeline runs until the audit stage, whose place a stage
that keeps a copy of each context takes, so they hold what the stages before it learnt (caller,
chain, hop token, policy version, body). Each request then runs the stage over a copy of one
of them, ``--concurrency`` at a time, the broker's garbage collector settings in force
(``gc.freeze`` after start-up and its thresholds). As in ``benchmarks.pipeline_instructions``,
the script runs twice under ``valgrind --tool=callgrind``, with 320 and 1,280 requests after
the same warm-up; the difference of the two totals, divided by 960, is one request's cost.
``--broker-ref``: count the ``broker/`` of that commit (``git archive``) instead of the
worktree's. ``--bare``: the same requests without the stage (what the harness itself costs:
the copies of the contexts, the answer's loop turns), to subtract from the count.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.hop_cpu import CALLS
from benchmarks.pipeline_cpu import BODY, HEADERS, bench_parts
from benchmarks.pipeline_instructions import counted_totals
from benchmarks.targets import snapshot_broker
from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder
from broker.audit.trail import AuditTrail
from broker.http.app import GC_THRESHOLDS
from broker.identity.keys import BrokerKeys
from broker.pipeline.a2a import a2a_stages
from broker.pipeline.stage import fold
from broker.settings import ServerSettings, Settings
from broker.stages.audit import A2aAudit, AuditForward
from broker.stores.memory import MemoryBackend
from broker.types import CallNext, MediationContext, Outcome, Reply, Stage
from testkit.procs import REPO_ROOT

WARM_UP = 208
NUMBERS = (320, 1280)
ANSWER = Reply(200, b'{"jsonrpc":"2.0","id":1,"result":{"task":{"id":"t1"}}}')


async def captured_contexts(count: int) -> list[MediationContext]:
    """``count`` contexts as the pipeline hands them to its audit stage."""
    settings = Settings(server=ServerSettings(public_url="http://broker.test"), budgets=CALLS)
    parts, _ = await bench_parts(
        settings, MemoryBackend().stores(), BrokerKeys(Ed25519PrivateKey.generate())
    )
    seen: list[MediationContext] = []

    async def keep(ctx: MediationContext, call_next: CallNext) -> Outcome:
        seen.append(copy.copy(ctx))
        return await call_next(ctx)

    stages = [keep if isinstance(s, AuditForward) else s for s in a2a_stages(parts)]
    call = fold(stages)

    async def body() -> bytes:
        return BODY

    for _ in range(count):
        await call(MediationContext("jsonrpc", "target", "POST", headers=HEADERS, read_body=body))
    return seen


async def run(number: int, concurrency: int, audit_dir: str, *, bare: bool = False) -> int:
    """``WARM_UP`` requests through the audit stage, then ``number``, ``concurrency`` at a time;
    how many records the log holds once closed. ``bare``: without the stage (none)."""
    contexts = await captured_contexts(concurrency)
    log = FileAuditLog(audit_dir, fsync=False)
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    recorder = AuditRecorder(await AuditTrail.open(log, "audit-stage-instr", keys))
    stage: Stage = AuditForward[MediationContext](recorder, A2aAudit())
    if bare:
        stage = _bare

    async def answered(ctx: MediationContext) -> Outcome:
        await asyncio.sleep(0)  # the upstream answers in a later loop turn
        return ANSWER

    async def many(captured: MediationContext, count: int) -> None:
        for _ in range(count):
            await stage(copy.copy(captured), answered)
            await asyncio.sleep(0)  # the answer is sent

    async def round_of(count: int) -> None:
        await asyncio.gather(*(many(ctx, count // concurrency) for ctx in contexts))

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    await round_of(WARM_UP)
    gc.collect()
    await round_of(number)
    await recorder.close()
    written = Path(audit_dir) / "audit-audit-stage-instr.jsonl"
    return len(written.read_bytes().splitlines()) if written.exists() else 0


async def _bare(ctx: MediationContext, call_next: CallNext) -> Outcome:
    return await call_next(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--broker-ref", default="worktree", help="a git ref, or worktree")
    parser.add_argument("--bare", action="store_true", help="the harness alone, no stage")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the counted process
    parser.add_argument("--audit-dir", help=argparse.SUPPRESS)  # the counted process's log
    args = parser.parse_args()
    if args.run is not None:
        asyncio.run(run(args.run, args.concurrency, args.audit_dir, bare=args.bare))
        return
    with tempfile.TemporaryDirectory(prefix="a2a-audit-stage-instr-") as scratch:
        home = REPO_ROOT
        if args.broker_ref != "worktree":
            home = snapshot_broker(args.broker_ref, Path(scratch) / "tree")
        module = "benchmarks.audit_stage_instructions"
        options = ("--bare",) if args.bare else ()
        low, high = counted_totals(module, NUMBERS, args.concurrency, home, Path(scratch), *options)
    per_request = (high - low) / (NUMBERS[1] - NUMBERS[0])
    what = "the harness alone" if args.bare else "audit stage"
    print(f"broker {args.broker_ref} c={args.concurrency}: {what} "
          f"{per_request / 1e3:.1f} k instructions per request "
          f"({low} and {high} in all)")  # fmt: skip


if __name__ == "__main__":
    main()

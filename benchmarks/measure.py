"""One measured point: wrk at one concurrency against one target, with the target's CPU and RSS."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.audit_stats import AuditCounters
from benchmarks.loadgen import preflight, run_wrk, stream_probe, write_script
from benchmarks.proc_stats import Measured, cpu_seconds, rss_bytes
from benchmarks.quiet import ForeignLoad, wait_for_quiet
from benchmarks.redis_stats import RedisCounters
from benchmarks.targets import Target


@dataclass(frozen=True)
class Conditions:
    """How points are taken: wrk's cores, and how to see (and wait out) other work."""

    wrk_cores: str | None
    children: Callable[[], Iterable[Measured]]
    max_wait_s: float
    retries: int = 2  # extra attempts at a point that other work disturbed; the quietest is kept
    patience_until: float = float("inf")  # monotonic time after which nothing waits or retries

    def wait_s(self) -> float:
        return max(0.0, min(self.max_wait_s, self.patience_until - time.monotonic()))


MESSAGE = b'{"messageId":"m-1","role":"ROLE_USER","parts":[{"text":"hello"}]}'
UNARY_BODY = b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":%s}}' % MESSAGE
STREAM_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"SendStreamingMessage","params":{"message":%s}}' % MESSAGE
)
NOISY_CORES = 0.25  # foreign CPU during a point above which its figures are suspect
UNARY_EXPECT = b'"TASK_STATE_COMPLETED"'
STREAM_EXPECT = b'"final":true'


@dataclass(frozen=True)
class Point:
    scenario: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_req: float
    cpu_util: float  # the measured process tree's CPU seconds per wall second
    sys_share: float  # the kernel's part of that CPU time (loopback TCP, epoll)
    rss_mb: float
    foreign_cores: float  # CPU used meanwhile by processes outside the run, in cores
    waited_s: float  # how long the run waited for the machine to be quiet first
    # Against a broker on the harness's private Redis (benchmarks/redis_stats.py), per request:
    # every command Redis ran (scripts' own calls included), scripts (EVALSHA), socket reads
    # from clients (~ round trips), Redis CPU, and the calls per command.
    redis_cmds_per_req: float | None = None
    redis_scripts_per_req: float | None = None
    redis_reads_per_req: float | None = None
    redis_cpu_us_per_req: float | None = None
    redis_calls: dict[str, float] = field(default_factory=dict)
    # Against a broker whose /metrics the run can read (benchmarks/audit_stats.py): fsyncs of
    # the audit file per request, and audit records per fsync (the group commit's batch).
    audit_fsyncs_per_req: float | None = None
    audit_records_per_fsync: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    body: bytes
    expect: bytes


UNARY = Workload(UNARY_BODY, UNARY_EXPECT)
STREAM = Workload(STREAM_BODY, STREAM_EXPECT)


def measure(
    scenario: str,
    *,
    target: Target,
    workload: Workload,
    concurrencies: tuple[int, ...],
    seconds: float,
    work_dir: Path,
    conditions: Conditions,
) -> list[Point]:
    """Check one answer, warm up for a second, then one wrk run per concurrency."""
    preflight(target.url, workload.body, target.headers, workload.expect)
    script = write_script(work_dir / f"{scenario}.lua", workload.body, target.headers)
    run_wrk(target.url, script, 16, 1.0, conditions.wrk_cores)
    return [
        _quietest(scenario, target, script, c=c, seconds=seconds, cond=conditions)
        for c in concurrencies
    ]


def _quietest(
    scenario: str, target: Target, script: Path, *, c: int, seconds: float, cond: Conditions
) -> Point:
    """The point, taken again (up to ``cond.retries`` times) while other work disturbed it."""
    best = _point(scenario, target, script, c=c, seconds=seconds, cond=cond)
    for _ in range(cond.retries):
        if best.foreign_cores <= NOISY_CORES or cond.wait_s() == 0:
            break
        again = _point(scenario, target, script, c=c, seconds=seconds, cond=cond)
        best = min(best, again, key=lambda p: p.foreign_cores)
    return best


def _point(
    scenario: str, target: Target, script: Path, *, c: int, seconds: float, cond: Conditions
) -> Point:
    waited0 = time.monotonic()
    wait_for_quiet(cond.children, cond.wait_s())
    waited = time.monotonic() - waited0 - 1.0  # one sample is not waiting
    foreign = ForeignLoad(cond.children)
    foreign.start()
    counters = RedisCounters(target.redis) if target.redis else None
    if counters:
        counters.start()
    audit = (
        AuditCounters(target.metrics_url, target.metrics_headers) if target.metrics_url else None
    )
    if audit:
        audit.start()
    (user0, sys0), wall0 = cpu_seconds(target.process.pid), time.monotonic()
    result = run_wrk(target.url, script, c, seconds, cond.wrk_cores)
    user1, sys1 = cpu_seconds(target.process.pid)
    wall = time.monotonic() - wall0
    redis = counters.per_request(result.requests) if counters else {}
    audited = audit.per_request(result.requests) if audit else {}
    cpu = (user1 - user0) + (sys1 - sys0)
    point = Point(
        scenario=scenario,
        concurrency=c,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        requests=result.requests,
        cpu_us_per_req=cpu / result.requests * 1e6 if result.requests else 0.0,
        cpu_util=cpu / wall,
        sys_share=(sys1 - sys0) / cpu if cpu else 0.0,
        rss_mb=rss_bytes(target.process.pid) / 2**20,
        foreign_cores=foreign.cores(),
        waited_s=max(waited, 0.0),
        **redis,
        **audited,
    )
    print(describe(point), flush=True)
    return point


def describe(point: Point) -> str:
    return (
        f"  {point.scenario:<10} c={point.concurrency:<3} {point.rps:>8.0f} req/s  "
        f"p50 {point.p50_ms:6.2f} ms  "
        f"p99 {point.p99_ms:6.2f} ms  cpu {point.cpu_us_per_req:6.0f} us/req "
        f"({point.cpu_util:.0%})  rss {point.rss_mb:5.1f} MB  errors {point.errors}  "
        f"foreign {point.foreign_cores:.2f} cores (waited {point.waited_s:.0f} s)"
        + (
            f"  redis {point.redis_cmds_per_req:.2f} cmds/req, "
            f"{point.redis_scripts_per_req:.2f} scripts/req, "
            f"{point.redis_reads_per_req:.2f} reads/req, "
            f"{point.redis_cpu_us_per_req:.0f} us cpu/req"
            if point.redis_cmds_per_req is not None
            else ""
        )
        + (
            f"  audit {point.audit_fsyncs_per_req:.2f} fsyncs/req, "
            f"{point.audit_records_per_fsync:.1f} records/fsync"
            if point.audit_fsyncs_per_req is not None
            else ""
        )
    )


def probe_streams(scenario: str, target: Target, seconds: float) -> dict[str, Any]:
    result = stream_probe(target.url, STREAM_BODY, target.headers, seconds)
    print(
        f"  {scenario:<10} ttfe p50 {result.ttfe_p50_ms:.2f} ms p99 {result.ttfe_p99_ms:.2f} ms "
        f"stream p50 {result.stream_p50_ms:.2f} ms ({result.streams} streams)",
        flush=True,
    )
    return {"scenario": scenario, **asdict(result)}

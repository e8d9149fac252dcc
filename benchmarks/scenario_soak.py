"""Scenario (k): a soak: does the broker's memory, and its Redis's, level off under steady load?

For each store (memory, then redis), one broker with full metering as in (e) is driven with
unary SendMessage (every task ends in its answer: a finished task) in chunks, until
``A2A_BENCH_SOAK_REQUESTS`` requests (default 300,000) have been answered or, when
``A2A_BENCH_SOAK_DURATION_S`` is set, for that many seconds instead. More knobs:
``A2A_BENCH_SOAK_CHUNK_S`` (seconds per chunk, default 20), ``A2A_BENCH_SOAK_STORES`` (default
``memory,redis``), ``A2A_BENCH_SOAK_CONCURRENCY`` (wrk's connections, default 16),
``A2A_BENCH_SOAK_RATE`` (an open loop at this many requests a second instead of wrk, so a soak
on a shared machine takes a bounded share of it) and ``A2A_BENCH_SOAK_FINISHED_TTL_S`` (the
broker's ``[store] finished_task_ttl_s``; default the broker's own). After each chunk the
broker's RSS (its whole process tree) and, on the redis store, its private Redis's
``used_memory`` and key count are read. The result is each reading by requests and seconds so
far, and the growth per 100,000 requests over the second half of the run (after the memory
store's capacity, the finished routes' retention and the allocator have had their say): about
zero when state follows what is alive.

Results are printed and written to ``benchmarks/results/soak.json``; docs/scaling.md quotes
them. ``python -m benchmarks.run --scenarios k`` runs it inside the suite;
``python -m benchmarks.scenario_soak --duration 1800 --stores redis --out FILE`` runs it
alone (the suite's docs and results untouched), e.g. in the background for half an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from benchmarks.loadgen import preflight, require_wrk, run_wrk, write_script
from benchmarks.measure import UNARY_BODY, UNARY_EXPECT
from benchmarks.proc_stats import rss_bytes
from benchmarks.targets import (
    REPO_ROOT,
    Env,
    Placement,
    Target,
    broker,
    environment,
    snapshot_broker,
)

if TYPE_CHECKING:
    from benchmarks.run import Run

REQUESTS_ENV = "A2A_BENCH_SOAK_REQUESTS"
DURATION_ENV = "A2A_BENCH_SOAK_DURATION_S"
STORES_ENV = "A2A_BENCH_SOAK_STORES"  # comma-separated; default memory,redis
CONCURRENCY_ENV = "A2A_BENCH_SOAK_CONCURRENCY"
FINISHED_TTL_ENV = "A2A_BENCH_SOAK_FINISHED_TTL_S"
RATE_ENV = "A2A_BENCH_SOAK_RATE"
DEFAULT_REQUESTS = 300_000
CHUNK_S = float(os.environ.get("A2A_BENCH_SOAK_CHUNK_S", "20"))
CONCURRENCY = 16
RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"


@dataclass(frozen=True)
class Plan:
    """How long and how hard one store is soaked."""

    requests: int = DEFAULT_REQUESTS
    duration_s: float | None = None  # when set, run this long instead of ``requests``
    concurrency: int = CONCURRENCY
    chunk_s: float = CHUNK_S
    finished_ttl_s: int | None = None  # the broker's [store] finished_task_ttl_s
    rate: float | None = None  # when set, an open loop at this many requests/s instead of wrk
    max_connections: int = 256  # the open loop's connections at most

    def more(self, done: int, elapsed_s: float) -> bool:
        if self.duration_s is not None:
            return elapsed_s < self.duration_s
        return done < self.requests

    @classmethod
    def from_environment(cls) -> Plan:
        duration = os.environ.get(DURATION_ENV)
        ttl = os.environ.get(FINISHED_TTL_ENV)
        rate = os.environ.get(RATE_ENV)
        return cls(
            requests=int(os.environ.get(REQUESTS_ENV, DEFAULT_REQUESTS)),
            duration_s=float(duration) if duration else None,
            concurrency=int(os.environ.get(CONCURRENCY_ENV, CONCURRENCY)),
            finished_ttl_s=int(ttl) if ttl else None,
            rate=float(rate) if rate else None,
        )


def _redis_reading(url: str) -> dict[str, int]:
    with redis.Redis.from_url(url) as client:
        return {
            "redis_used_memory": int(client.info("memory")["used_memory"]),
            "redis_keys": int(client.dbsize()),
        }


def _reading(target: Target, requests: int, elapsed_s: float) -> dict[str, int]:
    reading = {"requests": requests, "seconds": round(elapsed_s),
               "broker_rss": rss_bytes(target.process.pid)}  # fmt: skip
    if target.redis:
        reading.update(_redis_reading(target.redis))
    return reading


def _per_100k(readings: list[dict[str, int]], field: str) -> float | None:
    """Growth of ``field`` per 100,000 requests over the second half of the readings."""
    half = readings[len(readings) // 2 :]
    if len(half) < 2 or field not in half[0]:
        return None
    first, last = half[0], half[-1]
    done = last["requests"] - first["requests"]
    return (last[field] - first[field]) / done * 100_000 if done else None


def _show(store: str, reading: dict[str, int]) -> None:
    redis_part = (f"  redis {reading['redis_used_memory'] / 1e6:6.1f} MB "
                  f"{reading['redis_keys']:>8,} keys"
                  if "redis_used_memory" in reading else "")  # fmt: skip
    print(
        f"  k-{store:<7} {reading['seconds']:>5} s {reading['requests']:>9,} requests "
        f"({reading.get('errors', 0):,} errors)  "
        f"broker RSS {reading['broker_rss'] / 1e6:6.1f} MB{redis_part}",
        flush=True,
    )


def _chunk(target: Target, script: Path, cores: str | None, plan: Plan) -> tuple[int, int]:
    """One chunk of load: requests answered, errors."""
    if plan.rate is None:
        result = run_wrk(target.url, script, plan.concurrency, plan.chunk_s, cores)
        return result.requests, result.errors
    from benchmarks import openloop

    loop = openloop.run(openloop.Plan(target.url, plan.rate, plan.chunk_s, UNARY_BODY,
                                      dict(target.headers), warmup=0.0,
                                      max_connections=plan.max_connections))  # fmt: skip
    return round(loop.achieved_rps * loop.seconds), loop.errors


def soak(env: Env, work_dir: Path, cores: str | None, store: str, plan: Plan) -> dict[str, Any]:
    settings = {"finished_task_ttl_s": plan.finished_ttl_s} if plan.finished_ttl_s else None
    with broker(env, store=store, store_settings=settings) as target:
        preflight(target.url, UNARY_BODY, target.headers, UNARY_EXPECT)
        script = write_script(work_dir / f"k-{store}.lua", UNARY_BODY, target.headers)
        started = time.monotonic()
        readings = [_reading(target, 0, 0.0)]
        done = errors = 0
        while plan.more(done, time.monotonic() - started):
            answered, failed = _chunk(target, script, cores, plan)
            done += answered
            errors += failed
            readings.append(_reading(target, done, time.monotonic() - started))
            readings[-1]["errors"] = errors
            _show(store, readings[-1])
    return {
        "scenario": f"k-{store}", "store": store, "concurrency": plan.concurrency,
        "rate": plan.rate,
        "duration_s": plan.duration_s, "finished_task_ttl_s": plan.finished_ttl_s,
        "requests": done, "errors": errors, "readings": readings,
        "broker_rss_per_100k": _per_100k(readings, "broker_rss"),
        "redis_used_memory_per_100k": _per_100k(readings, "redis_used_memory"),
        "redis_keys_per_100k": _per_100k(readings, "redis_keys"),
    }  # fmt: skip


def _summary(results: list[dict[str, Any]]) -> None:
    for result in results:
        rss, used = result["broker_rss_per_100k"], result["redis_used_memory_per_100k"]
        redis_part = f", redis {used / 1e6:+.1f} MB" if used is not None else ""
        print(f"  {result['scenario']:<9} per 100k requests (second half): broker RSS "
              f"{(rss or 0) / 1e6:+.1f} MB{redis_part}", flush=True)  # fmt: skip


def scenario_k(run: Run) -> None:
    plan = Plan.from_environment()
    stores = os.environ.get(STORES_ENV, "memory,redis").split(",")
    cores = run.conditions.wrk_cores
    results = [soak(run.env, run.work_dir, cores, store.strip(), plan) for store in stores]
    _summary(results)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenario_soak",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--stores", default="memory,redis", help="comma-separated")
    parser.add_argument("--duration", type=float, help="seconds per store (default: --requests)")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--rate", type=float, help="open loop at this rate instead of wrk")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="with --rate: the open loop's connections at most",
    )
    parser.add_argument("--chunk", type=float, default=CHUNK_S, help="seconds between readings")
    parser.add_argument("--finished-ttl", type=int, help="[store] finished_task_ttl_s")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--broker-ref",
        default="HEAD",
        help="git ref whose committed broker/ runs ('worktree': as it stands)",
    )
    args = parser.parse_args(argv)
    require_wrk()
    plan = Plan(
        args.requests, args.duration, args.concurrency, args.chunk, args.finished_ttl, args.rate
    )
    print(f"soak {args.stores}: {plan}; {' '.join(sys.argv)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="a2a-soak-") as tmp:
        work_dir = Path(tmp)
        placement = Placement(sut=None, rest=None)  # shares the machine: pin nothing
        src = (
            REPO_ROOT
            if args.broker_ref == "worktree"
            else snapshot_broker(args.broker_ref, work_dir / "broker-src")
        )
        with environment(work_dir, placement, 10, src) as env:
            stores = [s.strip() for s in args.stores.split(",") if s.strip()]
            results = [soak(env, work_dir, None, store, plan) for store in stores]
    _summary(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

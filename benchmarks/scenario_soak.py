"""Scenario (k): a soak: does the broker's memory, and its Redis's, level off under steady load?

For each store (memory, then redis), one broker with full metering as in (e) is driven by wrk
at c=16 with unary SendMessage (every task ends in its answer: a finished task) in chunks,
until ``A2A_BENCH_SOAK_REQUESTS`` requests (default 300,000) have been answered
(``A2A_BENCH_SOAK_CHUNK_S``: seconds per chunk, default 20; ``A2A_BENCH_SOAK_STORES``: which
stores, default ``memory,redis``). After each
chunk the broker's RSS (its whole process tree) and, on the redis store, its private Redis's
``used_memory`` are read. The result is each reading by requests so far, and the growth per
100,000 requests over the second half of the run (after the memory store's capacity and the
allocator have had their say): about zero when state follows what is alive.

Results are printed and written to ``benchmarks/results/soak.json``; docs/scaling.md quotes
them. ``python -m benchmarks.run --scenarios k`` runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from benchmarks.loadgen import preflight, run_wrk, write_script
from benchmarks.measure import UNARY_BODY, UNARY_EXPECT
from benchmarks.proc_stats import rss_bytes
from benchmarks.targets import Target, broker

if TYPE_CHECKING:
    from benchmarks.run import Run

REQUESTS_ENV = "A2A_BENCH_SOAK_REQUESTS"
STORES_ENV = "A2A_BENCH_SOAK_STORES"  # comma-separated; default memory,redis
DEFAULT_REQUESTS = 300_000
CHUNK_S = float(os.environ.get("A2A_BENCH_SOAK_CHUNK_S", "20"))
CONCURRENCY = 16
RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"


def _redis_used(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


def _reading(target: Target, requests: int) -> dict[str, int]:
    reading = {"requests": requests, "broker_rss": rss_bytes(target.process.pid)}
    if target.redis:
        reading["redis_used_memory"] = _redis_used(target.redis)
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
    redis_part = (f"  redis {reading['redis_used_memory'] / 1e6:6.1f} MB"
                  if "redis_used_memory" in reading else "")  # fmt: skip
    print(f"  k-{store:<7} {reading['requests']:>9,} requests  "
          f"broker RSS {reading['broker_rss'] / 1e6:6.1f} MB{redis_part}", flush=True)


def soak(run: Run, store: str, total: int) -> dict[str, Any]:
    with broker(run.env, store=store) as target:
        preflight(target.url, UNARY_BODY, target.headers, UNARY_EXPECT)
        script = write_script(run.work_dir / f"k-{store}.lua", UNARY_BODY, target.headers)
        readings = [_reading(target, 0)]
        done = errors = 0
        while done < total:
            result = run_wrk(target.url, script, CONCURRENCY, CHUNK_S, run.conditions.wrk_cores)
            done += result.requests
            errors += result.errors
            readings.append(_reading(target, done))
            _show(store, readings[-1])
    return {
        "scenario": f"k-{store}", "store": store, "concurrency": CONCURRENCY,
        "requests": done, "errors": errors, "readings": readings,
        "broker_rss_per_100k": _per_100k(readings, "broker_rss"),
        "redis_used_memory_per_100k": _per_100k(readings, "redis_used_memory"),
    }  # fmt: skip


def scenario_k(run: Run) -> None:
    total = int(os.environ.get(REQUESTS_ENV, DEFAULT_REQUESTS))
    stores = os.environ.get(STORES_ENV, "memory,redis").split(",")
    results = [soak(run, store.strip(), total) for store in stores]
    for result in results:
        rss, used = result["broker_rss_per_100k"], result["redis_used_memory_per_100k"]
        redis_part = f", redis {used / 1e6:+.1f} MB" if used is not None else ""
        print(f"  {result['scenario']:<9} per 100k requests (second half): broker RSS "
              f"{(rss or 0) / 1e6:+.1f} MB{redis_part}", flush=True)  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))

"""Scenario (p): the broker's p99 at 60% of its saturation throughput, driven open loop.

The target asks for "p99 at most 15 ms while running at 60% of the broker's saturation
throughput" (full pipeline, unary SendMessage, one worker). For each store, in one run:

1. start the broker (full metering, as in (e)) and find its saturation throughput: wrk, closed
   loop, at c=16 and c=64 for a point's length each; the higher rate counts;
2. drive it open loop (``benchmarks/openloop.py``) at 60% of that for at least 5 s after a
   1 s warm-up, latency from each request's intended send time;
3. stop it and drive the upstream directly at the same rate: the floor that the generator,
   the shared core and the upstream together set, with the generator's own CPU use.

The generator runs inside the harness process, which is pinned to the "rest" core with the
upstream and Redis, so its CPU figure is that core's share it took.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import openloop
from benchmarks.loadgen import preflight, run_wrk, write_script
from benchmarks.measure import UNARY_BODY, UNARY_EXPECT
from benchmarks.proc_stats import process_tree
from benchmarks.quiet import ForeignLoad, wait_for_quiet
from benchmarks.targets import Target, broker, direct
from testkit.procs import Process

if TYPE_CHECKING:
    from benchmarks.run import Run

SHARE = 0.6  # of saturation throughput
P99_TARGET_MS = 15.0
SATURATION_CONCURRENCIES = (16, 64)
MIN_SECONDS = 5.0
WARMUP_S = 1.0
STORES = ("redis", "memory")
_TICKS = os.sysconf("SC_CLK_TCK")


class _CpuWindow:
    """A process tree's CPU seconds between the generator's window marks (cheap: on its loop)."""

    def __init__(self, child: Process) -> None:
        self._pids = process_tree(child.pid)  # read once: walking /proc would stall the loop
        self._marks: dict[str, tuple[float, float]] = {}

    def __call__(self, edge: str) -> None:
        self._marks[edge] = (sum(_cpu_seconds(pid) for pid in self._pids), time.perf_counter())

    def util(self) -> float:
        if {"start", "end"} - self._marks.keys():
            return 0.0
        (cpu0, wall0), (cpu1, wall1) = self._marks["start"], self._marks["end"]
        return (cpu1 - cpu0) / (wall1 - wall0) if wall1 > wall0 else 0.0


def _cpu_seconds(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def saturation(run: Run, target: Target, name: str) -> dict[str, Any]:
    """wrk at each of SATURATION_CONCURRENCIES after a 1 s warm-up; the best req/s counts."""
    preflight(target.url, UNARY_BODY, target.headers, UNARY_EXPECT)
    script = write_script(run.work_dir / f"{name}.lua", UNARY_BODY, target.headers)
    cores = run.conditions.wrk_cores
    run_wrk(target.url, script, 16, 1.0, cores)
    by_c = {}
    for c in SATURATION_CONCURRENCIES:
        wait_for_quiet(run.conditions.children, run.conditions.wait_s())
        by_c[str(c)] = run_wrk(target.url, script, c, run.seconds, cores).rps
    return {"rps": max(by_c.values()), "rps_by_c": by_c, "seconds": run.seconds}


def drive(run: Run, target: Target, rate: float) -> dict[str, Any]:
    """The open-loop generator at ``rate`` against ``target``, with the target's CPU use."""
    preflight(target.url, UNARY_BODY, target.headers, UNARY_EXPECT)
    wait_for_quiet(run.conditions.children, run.conditions.wait_s())
    window = _CpuWindow(target.process)
    foreign = ForeignLoad(run.conditions.children)
    foreign.start()
    plan = openloop.Plan(target.url, rate, max(run.seconds, MIN_SECONDS), UNARY_BODY,
                         target.headers, warmup=WARMUP_S)  # fmt: skip
    result = openloop.run(plan, window)
    return {**result.as_dict(), "sut_cpu_util": window.util(), "foreign_cores": foreign.cores()}


def _show(label: str, r: dict[str, Any]) -> None:
    print(f"  {label:<10} open loop {r['target_rps']:,.0f} req/s: achieved {r['achieved_rps']:,.0f}"
          f"  p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}  p99.9 {r['p999_ms']:.2f} ms  "
          f"errors {r['errors']}  server cpu {r['sut_cpu_util']:.0%}  "
          f"generator cpu {r['gen_cpu_util']:.0%} ({r['gen_cpu_us_per_req']:.0f} us/req)  "
          f"foreign {r['foreign_cores']:.2f} cores", flush=True)  # fmt: skip


def measure_store(run: Run, store: str) -> dict[str, Any]:
    name = f"p-{store}"
    with broker(run.env, store=store) as target:
        sat = saturation(run, target, name)
        rate = round(sat["rps"] * SHARE)
        print(f"  {name:<10} saturation {sat['rps']:,.0f} req/s "
              f"(c={'/'.join(sat['rps_by_c'])}: "
              f"{', '.join(f'{v:,.0f}' for v in sat['rps_by_c'].values())}); "
              f"open loop at {SHARE:.0%} = {rate:,} req/s", flush=True)  # fmt: skip
        through_broker = drive(run, target, rate)
    _show(name, through_broker)
    floor = drive(run, direct(run.env), rate)
    _show("  direct", floor)
    p99 = through_broker["p99_ms"]
    return {
        "scenario": name, "store": store, "metering": "budget", "share": SHARE,
        "saturation": sat, "rate": rate, "broker": through_broker, "direct": floor,
        "p99_ms": p99,  # the broker's, by which --repeat picks the median round
        "p99_target_ms": P99_TARGET_MS, "met": p99 <= P99_TARGET_MS,
    }  # fmt: skip


def scenario_p(run: Run) -> None:
    for store in STORES:
        run.openloop.append(measure_store(run, store))

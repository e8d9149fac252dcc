"""Run the benchmark suite and rewrite docs/benchmarks.md (and docs/benchmarks.png).

    .venv/bin/python -m benchmarks.run [--quick] [--scenarios a,b1,b2,c,e,f,j,r] [--merge]
                                       [--profile] [--repeat N]

Everything binds 127.0.0.1 on free ports and is stopped in ``finally``. Scenarios:

  a   direct to the upstream (the floor; latency baseline)
  b1  minimal Litestar pass-through proxy, aiohttp upstream client (throughput baseline)
  b2  the same proxy with httpx.AsyncClient
  c   the broker, memory store, the whole current pipeline, unary SendMessage (JSON-RPC)
  e   the same with the redis store
  f   streaming: SendStreamingMessage direct and through the broker (memory store)
  j   the broker (redis store) with 1 and 2 worker processes, allowed on both cores
  r   what budgets and rate limits cost: the broker on the redis store with no
      budget or rate limit (r-none), with the caller's budget as in (e) (r-budget), and with
      that budget plus a per-agent rate limit that never refuses (r-rate)
  d   each stage alone over a broker with every optional stage off (scenario_stages.py)
  h   10,000 registered agents and 10,000 policy lines vs 2 and none (scenario_stages.py)
  i   the broker's /v1/chat/completions beside LiteLLM's proxy (scenario_llm.py)
  g   delegation chains of depth 1-5, through the broker and agent to agent (scenario_chain.py)
  p   p99 at 60% of the broker's saturation throughput, open loop (scenario_openloop.py)
  k   soak: broker RSS and Redis memory per 100k requests (scenario_soak.py; not in the
      default run's docs table: results in benchmarks/results/soak.json)
  s   the broker under `a2a-broker serve`, stock uvicorn and Granian (scenario_servers.py)

Against a broker on the harness's private redis-server, every point also reads Redis's
counters (commands, EVALSHA scripts, socket reads, CPU per request), and after the points
a MONITOR probe sorts the commands into those sent by the broker and those run by scripts.

``--profile`` also samples the broker (redis store) with py-spy for 10 s at c=16.
``--repeat N`` measures the chosen scenarios in N alternated rounds (every one in order, then
again) and reports each point as the round whose throughput is the median, with the spread
over the rounds (benchmarks/repeat.py, decision 0095); h and k are measured once, and p keeps
the round with the median p99 (decision 0108).
``--merge`` keeps, from the previous benchmarks/results/latest.json, the scenarios this run
did not measure; the report labels them with their own date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import repeat, report
from benchmarks.loadgen import require_wrk
from benchmarks.measure import (
    STREAM,
    UNARY,
    UNARY_BODY,
    Conditions,
    Point,
    Workload,
    measure,
    probe_streams,
)
from benchmarks.scenario_chain import scenario_g
from benchmarks.scenario_llm import scenario_i
from benchmarks.scenario_openloop import scenario_p
from benchmarks.scenario_servers import scenario_s
from benchmarks.scenario_soak import scenario_k
from benchmarks.scenario_stages import scenario_d, scenario_h
from benchmarks.targets import (
    REPO_ROOT,
    Env,
    Placement,
    Target,
    broker,
    describe_ref,
    direct,
    environment,
    proxy,
    snapshot_broker,
)

CONCURRENCIES = (1, 16, 64)
ALL = ("a", "b1", "b2", "c", "e", "f", "j", "r", "d", "h", "i", "g", "p", "s", "k")
METERINGS = ("none", "budget", "rate")
STREAM_EVENTS = 10
# What a scenario appends to, and so what --repeat reduces to one record per point.
RECORDS = ("points", "stream_points", "probes", "redis_probes", "launches", "chain_points",
           "openloop")  # fmt: skip
RAW_RESULTS = REPO_ROOT / "benchmarks" / "results" / "latest.json"


class Run:
    """The state of one run: settings, and everything measured so far."""

    def __init__(self, env: Env, seconds: float, work_dir: Path, args: argparse.Namespace) -> None:
        self.env = env
        self.conditions = Conditions(
            env.placement.rest,
            lambda: list(env.children),
            args.max_wait,
            patience_until=time.monotonic() + args.patience * 60,
        )
        self.seconds = seconds
        self.work_dir = work_dir
        self.points: list[Point] = []
        self.stream_points: list[Point] = []
        self.probes: list[dict[str, Any]] = []
        self.redis_probes: list[dict[str, Any]] = []
        self.profile: dict[str, Any] | None = None
        self.launches: list[dict[str, Any]] = []  # how (d) and (h) brokers started
        self.chain_points: list[dict[str, Any]] = []  # (g), with depth and mode
        self.openloop: list[dict[str, Any]] = []  # (p), one record per store
        self.rounds: dict[str, list[int]] = {name: [] for name in RECORDS}  # of each record

    def _records(self, name: str) -> list[Any]:
        records: list[Any] = getattr(self, name)
        return records

    @contextlib.contextmanager
    def round(self, number: int) -> Iterator[None]:
        """Note ``number`` as the round of every record appended meanwhile (--repeat)."""
        before = {name: len(self._records(name)) for name in RECORDS}
        yield
        for name in RECORDS:
            self.rounds[name] += [number] * (len(self._records(name)) - before[name])

    def _measure(self, scenario: str, target: Target, workload: Workload) -> list[Point]:
        return measure(
            scenario,
            target=target,
            workload=workload,
            concurrencies=CONCURRENCIES,
            seconds=self.seconds,
            work_dir=self.work_dir,
            conditions=self.conditions,
        )

    def unary(self, scenario: str, target: Target) -> None:
        self.points += self._measure(scenario, target, UNARY)
        if target.redis:
            from benchmarks.redis_stats import monitor_probe

            probe = monitor_probe(target.redis, target.url, target.headers, UNARY_BODY)
            print(f"  {scenario:<10} MONITOR: {probe['network_per_req']:.2f} commands/req from "
                  f"the broker, {probe['scripted_per_req']:.2f} run by scripts "
                  f"{probe['network']}", flush=True)  # fmt: skip
            self.redis_probes.append({"scenario": scenario, **probe})

    def streaming(self, scenario: str, target: Target) -> None:
        self.stream_points += self._measure(scenario, target, STREAM)
        self.probes.append(probe_streams(scenario, target, self.seconds))


def scenario_a(run: Run) -> None:
    run.unary("a", direct(run.env))


def scenario_b1(run: Run) -> None:
    with proxy(run.env, "aiohttp") as target:
        run.unary("b1", target)


def scenario_b2(run: Run) -> None:
    with proxy(run.env, "httpx") as target:
        run.unary("b2", target)


def scenario_c(run: Run) -> None:
    with broker(run.env, store="memory") as target:
        run.unary("c", target)


def scenario_e(run: Run) -> None:
    with broker(run.env, store="redis") as target:
        run.unary("e", target)


def scenario_f(run: Run) -> None:
    run.streaming("f-direct", direct(run.env))
    with broker(run.env, store="memory") as target:
        run.streaming("f-broker", target)


def scenario_j(run: Run) -> None:
    for workers in (1, 2):
        with broker(run.env, store="redis", workers=workers, cores="0,1") as target:
            time.sleep(1.0)  # let every worker finish starting before the warm-up
            run.unary(f"j-w{workers}", target)


def scenario_r(run: Run) -> None:
    for metering in METERINGS:
        with broker(run.env, store="redis", metering=metering) as target:
            run.unary(f"r-{metering}", target)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "a": scenario_a, "b1": scenario_b1, "b2": scenario_b2, "c": scenario_c,
    "e": scenario_e, "f": scenario_f, "j": scenario_j, "r": scenario_r,
    "d": scenario_d, "h": scenario_h, "i": scenario_i,
    "g": scenario_g, "p": scenario_p, "s": scenario_s, "k": scenario_k,
}  # fmt: skip


def _group(scenario: str) -> str:
    """The --scenarios name a point belongs to: 'f-broker' -> 'f', 'r-none' -> 'r'."""
    return scenario.split("-", 1)[0]


def _origin(earlier: dict[str, Any]) -> str:
    commit = earlier.get("machine", {}).get("commit", "?")
    return (f"{earlier['started']}, HEAD {commit}, {earlier['broker_code']}, "
            f"{earlier['seconds_per_point']:g} s per point, `{earlier['command']}`")  # fmt: skip


def merge(results: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """Keep ``earlier``'s scenarios that ``results`` did not measure, each labelled by origin.

    Ratios of a kept row are to the baselines of its own run, so the (a) and (b1) points of
    that run are kept too (as ``baselines``, not shown as rows) when this run re-measured them.
    """
    measured = results["points"] + results["stream_points"] + results.get("chain_points", [])
    measured += results.get("openloop", [])
    ran = {_group(p["scenario"]) for p in measured}
    label = _origin(earlier)

    def kept(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**p, "origin": p.get("origin") or label} for p in points
                if _group(p["scenario"]) not in ran]  # fmt: skip

    base = [{**p, "origin": p.get("origin") or label}
            for p in earlier["points"] + earlier.get("baselines", [])
            if p["scenario"] in ("a", "b1")]  # fmt: skip
    old_points = kept(earlier["points"])
    origins = {p["origin"] for p in old_points}
    return {
        **results,
        "points": results["points"] + old_points,
        "stream_points": results["stream_points"] + kept(earlier["stream_points"]),
        "probes": results["probes"] + kept(earlier.get("probes", [])),
        "redis_probes": results["redis_probes"] + kept(earlier.get("redis_probes", [])),
        "launches": results.get("launches", []) + kept(earlier.get("launches", [])),
        "chain_points": results.get("chain_points", []) + kept(earlier.get("chain_points", [])),
        "openloop": results.get("openloop", []) + kept(earlier.get("openloop", [])),
        "baselines": [b for b in base if b["origin"] in origins],
    }


def profile_broker(run: Run, seconds: float = 10.0) -> None:
    from benchmarks.profile import profile

    with broker(run.env, store="redis") as target:
        run.profile = profile(target, UNARY, seconds, run.work_dir, run.env.placement.rest)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 s per point instead of 5 s")
    parser.add_argument("--seconds", type=float, help="seconds per point (overrides --quick)")
    parser.add_argument("--scenarios", default=",".join(ALL), help="comma-separated subset")
    parser.add_argument("--profile", action="store_true", help="py-spy the broker at c=16")
    parser.add_argument(
        "--broker-ref",
        default="HEAD",
        help="git ref whose committed broker/ is measured (default HEAD); 'worktree' measures "
        "the working tree as it stands, uncommitted edits included",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=30.0,
        help="before each point, wait up to this many seconds for other processes to go quiet",
    )
    parser.add_argument(
        "--patience",
        type=float,
        default=10.0,
        help="minutes after which the run stops waiting for quiet and retrying noisy points",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite the docs from benchmarks/results/latest.json",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the scenarios of benchmarks/results/latest.json that this run does not "
        "measure (labelled with their own date and commit) instead of dropping them",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure the chosen scenarios in this many alternated rounds and report each "
        "point as the round with the median throughput, with the spread (h, k: once; p: the "
        "round with the median p99)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(ALL))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(ALL)}")
    args.chosen = [s for s in ALL if s in chosen]
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    return args


def _placement(no_pin: bool) -> Placement:
    if no_pin or (os.cpu_count() or 1) < 2:
        return Placement(sut=None, rest=None)
    return Placement()


def _stage_modules(src: Path) -> list[str]:
    return sorted(p.stem for p in (src / "broker" / "stages").glob("*.py") if p.stem != "__init__")


def _broker_source(ref: str, work_dir: Path) -> tuple[Path, str]:
    """Where to run the broker from, and how the report names that code."""
    if ref == "worktree":
        return REPO_ROOT, "the working tree as it stood (uncommitted edits included)"
    src = snapshot_broker(ref, work_dir / "broker-src")
    return src, f"`broker/` as committed at {describe_ref(ref)} (`--broker-ref {ref}`)"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.render_only:
        written = report.write(json.loads(RAW_RESULTS.read_text()), args.doc)
        print("rewrote " + ", ".join(written) + f" from {RAW_RESULTS.relative_to(REPO_ROOT)}")
        return 0
    require_wrk()
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    placement = _placement(args.no_pin)
    if placement.rest is not None:  # the harness runs the streaming probe: keep it off core 0
        os.sched_setaffinity(0, {int(placement.rest)})
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="a2a-bench-") as tmp:
        work_dir = Path(tmp)
        broker_src, broker_code = _broker_source(args.broker_ref, work_dir)
        stages = _stage_modules(broker_src)
        with environment(work_dir, placement, STREAM_EVENTS, broker_src) as env:
            run = Run(env, seconds, work_dir, args)
            for number, name in repeat.schedule(args.chosen, args.repeat):
                of = f" (round {number} of {args.repeat})" if args.repeat > 1 else ""
                print(f"scenario {name}{of}", flush=True)
                with run.round(number):
                    SCENARIOS[name](run)
            if args.profile:
                print("profile: py-spy on the broker (redis store), c=16", flush=True)
                profile_broker(run)
            redis_note = env.redis_note
    results = {
        "command": command.strip(),
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round((dt.datetime.now(dt.UTC) - started).total_seconds()),
        "seconds_per_point": seconds,
        "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # 1-minute, start/end
        "placement": {"sut": placement.sut, "rest": placement.rest},
        "redis": redis_note,
        "broker_code": broker_code,
        "broker_stages": stages,
        "stream_events": STREAM_EVENTS,
        "machine": report.machine(),
        "points": [p.as_dict() for p in run.points],
        "stream_points": [p.as_dict() for p in run.stream_points],
        "probes": run.probes,
        "redis_probes": run.redis_probes,
        "profile": run.profile,
        "launches": run.launches,
        "chain_points": run.chain_points,
        "openloop": run.openloop,
    }
    if args.repeat > 1:
        results = repeat.combine(results, run.rounds, args.repeat, args.chosen)
    if args.merge and RAW_RESULTS.exists():
        results = merge(results, json.loads(RAW_RESULTS.read_text()))
    RAW_RESULTS.parent.mkdir(exist_ok=True)
    RAW_RESULTS.write_text(json.dumps(results, indent=1))
    written = report.write(results, args.doc)
    print(f"wrote {RAW_RESULTS.relative_to(REPO_ROOT)}, " + ", ".join(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

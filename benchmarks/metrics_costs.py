"""What Prometheus metrics cost a mediated request (tracing off: the broker has none yet).

    .venv/bin/python -m benchmarks.metrics_costs [--seconds S] [--rounds N] [--number N]

1. **In process**: the hooks one unary request runs (the request's counters and histograms, two
   audit appends, three store round trips) timed with metrics on and off, in the mode
   ``a2a-broker serve`` runs them in (memory-mapped values shared by the workers) and in one
   process's memory; µs per request, best of 5 runs of ``--number``.
2. **Whole broker, same run**: two brokers with the full pipeline (Redis store, file audit with
   fsync, policy, a budget, breaker and bulkhead), one with ``[metrics] enabled = false``, side
   by side; unary SendMessage with wrk at c = 1 and 16, the two measured in turn for
   ``--rounds`` rounds. The broker's CPU per request is read from /proc; the median of the
   rounds is kept. The target: metrics on adds less than 5 % CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONCURRENCIES = (1, 16)
TARGET_SHARE = 0.05


def hooks_us(number: int) -> dict[str, float]:
    """µs per request of the hooks, metrics on and off, in this process's value mode."""
    from broker.observability import metrics, tally
    from broker.observability.probes import audit_written, store_call
    from broker.observability.record import observe_mediated
    from broker.protocols.a2a.operations import SEND_MESSAGE
    from broker.stores.base import AgentRecord
    from broker.types import MediationContext

    async def body() -> bytes:
        return b""

    ctx = MediationContext("jsonrpc", "bench", "POST", headers={}, read_body=body, caller="loadgen")
    ctx.target = AgentRecord(name="bench", card_json="{}")
    ctx.operation, ctx.upstream_status, ctx.upstream_s = SEND_MESSAGE, 200, 0.0005
    ctx.policy_version = "v1"
    took, _ = store_call("Bench.call")

    def one_request() -> None:
        observe_mediated(ctx, 200)
        audit_written(0.0001)
        audit_written(0.0001)
        took(0.0002)
        took(0.0002)
        took(0.0002)

    async def timed() -> float:
        """Best of 5, on an event loop as in the broker (batches flushed, flushes included)."""
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(number):
                one_request()
            tally.flush()
            best = min(best, time.perf_counter() - started)
        return best / number * 1e6

    found = {}
    for recording in (False, True):
        metrics.recording = recording
        found["on" if recording else "off"] = asyncio.run(timed())
    return found


def _hooks_in_child(number: int, multiprocess: bool) -> dict[str, float]:
    """Run ``hooks_us`` in a fresh interpreter: prometheus-client picks its value mode once."""
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as folder:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = folder
        code = (
            "import json, benchmarks.metrics_costs as m; "
            f"print(json.dumps(m.hooks_us({number})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
    import json

    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def whole_broker(seconds: float, rounds: int) -> dict[int, dict[str, list[float]]]:
    """Broker CPU µs per request of each round, at each concurrency, metrics off and on."""
    from benchmarks.loadgen import require_wrk
    from benchmarks.measure import UNARY, Conditions, measure
    from benchmarks.scenario_stages import StageConfig, compile_broker, stage_broker
    from benchmarks.targets import Placement, environment

    require_wrk()
    full = {"store": "redis", "audit": True, "metering": "budget"}
    configs = {
        "m-off": StageConfig(**full, containment=True, metrics=False),  # type: ignore[arg-type]
        "m-on": StageConfig(**full, containment=True, metrics=True),  # type: ignore[arg-type]
    }
    placement = Placement() if (os.cpu_count() or 1) >= 2 else Placement(sut=None, rest=None)
    cpu: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as tmp:
        work = Path(tmp)
        with environment(work, placement, 10) as env:
            compile_broker(env)
            conditions = Conditions(placement.rest, lambda: list(env.children), 2.0, retries=0)
            with stage_broker(env, "m-off", configs["m-off"]) as (off, _), stage_broker(
                env, "m-on", configs["m-on"]
            ) as (on, _):
                for _ in range(rounds):
                    for name, target in (("m-off", off), ("m-on", on)):
                        points = measure(
                            name, target=target, workload=UNARY, concurrencies=CONCURRENCIES,
                            seconds=seconds, work_dir=work, conditions=conditions,
                        )  # fmt: skip
                        for point in points:
                            assert point.errors == 0, f"{name}: {point.errors} errors"
                            cpu.setdefault((name, point.concurrency), []).append(
                                point.cpu_us_per_req
                            )
    return {c: {name: cpu[(name, c)] for name in configs} for c in CONCURRENCIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-process-only", action="store_true")
    args = parser.parse_args()
    hooks = {}
    for label, multiprocess in (("shared by workers (serve)", True), ("one process", False)):
        us = _hooks_in_child(args.number, multiprocess)
        hooks[multiprocess] = us["on"] - us["off"]
        print(f"hooks, {label:<26} off {us['off']:5.2f} µs/req   on {us['on']:5.2f} µs/req"
              f"   added {us['on'] - us['off']:+5.2f} µs/req", flush=True)  # fmt: skip
    if args.in_process_only:
        return
    for c, by in whole_broker(args.seconds, args.rounds).items():
        off, on = statistics.median(by["m-off"]), statistics.median(by["m-on"])
        spread = (max(by["m-off"]) - min(by["m-off"])) / off
        added = on - off
        print(f"broker c={c:<3} CPU µs/req, median of {len(by['m-off'])} rounds: metrics off "
              f"{off:6.0f} (rounds {_rounds(by['m-off'])}, spread {spread:.0%})   on {on:6.0f} "
              f"(rounds {_rounds(by['m-on'])})   difference {added:+5.0f} µs ({added / off:+.1%})")
        share = hooks[True] / off
        verdict = "meets" if share < TARGET_SHARE else "MISSES"
        print(f"         the hooks' added {hooks[True]:.1f} µs/req (serve mode, same run) are "
              f"{share:.2%} of the broker's CPU per request: {verdict} the < 5 % target")


def _rounds(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()

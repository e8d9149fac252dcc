"""What a calls budget costs a hop on Redis, in process: the broker's CPU and wall time, and
Redis's scripts, commands and CPU per request, without a budget and with one (reserved one by
one, and reserved ahead as the runtime serves it on Redis, decisions 0109 and 0110).

    .venv/bin/python -m benchmarks.budget_cpu [--variants none,plain,ahead] [--concurrency 1,16]
        [--number N] [--rounds R] [--repeat K]

The whole A2A pipeline (``broker.pipeline.a2a.a2a_stages``, as ``benchmarks.pipeline_cpu``
builds it) over a private redis-server, auditing off, in front of the fake transport answering
every ``SendMessage`` with a new completed task. Variants: ``none`` (no budget), ``plain`` (the
caller's calls budget of scenario (e), each call reserving its own) and ``ahead`` (the same
budget behind ``ReservingAhead`` with the default settings, as ``broker.runtime`` wraps the Redis
ledger). Each variant at each concurrency runs R rounds of N requests after a warm-up, K times
over, alternating. Prints per run: the best round's CPU µs per request (``time.process_time``,
this process), the median round's wall µs per request, and over all its rounds Redis's
``EVALSHA`` calls, commands and CPU (``INFO``) per request. Measure another commit's broker by
putting its ``broker/`` first on PYTHONPATH (``git archive <ref> broker | tar -x -C <dir>``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any, NamedTuple

import msgspec
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.hop_cpu import CALLS
from benchmarks.pipeline_cpu import bench_parts, sends
from broker.budgets.ahead import ReservingAhead
from broker.identity.keys import BrokerKeys
from broker.pipeline.a2a import A2aParts, a2a_stages
from broker.pipeline.stage import fold
from broker.settings import BudgetSettings, ServerSettings, Settings, StoreSettings
from broker.stores.cache import with_read_cache
from broker.stores.redis import RedisBackend
from testkit.procs import free_port
from testkit.redis_process import start_redis_server, stop_redis_server

VARIANTS = ("none", "plain", "ahead")
WARM_UP = 400


async def _parts(url: str, prefix: str, variant: str) -> tuple[A2aParts, ReservingAhead | None]:
    budgets = BudgetSettings() if variant == "none" else CALLS
    settings = Settings(server=ServerSettings(public_url="http://broker.test"), budgets=budgets)
    backend = RedisBackend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))
    stores = with_read_cache(backend.stores(), settings.store.read_cache_ttl_s)
    ahead = None
    if variant == "ahead":
        ahead = ReservingAhead(stores.budgets, most=budgets.reserve_ahead,
                               headroom=budgets.reserve_ahead_headroom,
                               ttl_s=budgets.reservation_ttl_s)  # fmt: skip
        stores = msgspec.structs.replace(stores, budgets=ahead)
    parts, _ = await bench_parts(settings, stores, BrokerKeys(Ed25519PrivateKey.generate()))
    return parts, ahead


def _redis_totals(client: redis.Redis) -> tuple[int, int, float]:
    """Redis's ``EVALSHA`` calls, commands and CPU µs so far."""
    stats: dict[str, Any] = client.info("commandstats")
    cpu: dict[str, Any] = client.info("cpu")
    scripts = sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_evalsha"))
    commands = sum(v["calls"] for v in stats.values())
    return scripts, commands, (cpu["used_cpu_sys"] + cpu["used_cpu_user"]) * 1e6


class Reading(NamedTuple):
    cpu_us: float  # the best round's, per request
    wall_us: float  # the median round's, per request
    scripts: float  # Redis's, per request, over every round
    commands: float
    redis_cpu_us: float


async def measure(
    url: str, variant: str, concurrency: int, number: int, rounds: int,
    *, prefix: str = "budget-cpu",
) -> Reading:  # fmt: skip
    parts, ahead = await _parts(url, f"{prefix}:{variant}:{concurrency}:{time.time_ns()}", variant)
    call = fold(a2a_stages(parts))
    probe = redis.Redis.from_url(url)
    try:
        await sends(call, WARM_UP, concurrency)
        cpu, wall = [], []
        before = _redis_totals(probe)
        for _ in range(rounds):
            gc.collect()
            await asyncio.sleep(0.05)  # the last round's settles land
            started, began = time.process_time(), time.perf_counter()
            await sends(call, number, concurrency)
            cpu.append((time.process_time() - started) / number * 1e6)
            wall.append((time.perf_counter() - began) / number * 1e6)
        after = _redis_totals(probe)
    finally:
        probe.close()
        if ahead is not None:
            await ahead.close()
    n = number * rounds
    scripts, commands, redis_cpu = ((b - a) / n for a, b in zip(before, after, strict=True))
    return Reading(min(cpu), statistics.median(wall), scripts, commands, redis_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--number", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2, help="runs of every variant, alternated")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    port = free_port()
    server = start_redis_server(port)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(args.repeat):
            for c in (int(c) for c in args.concurrency.split(",")):
                for variant in variants:
                    got = asyncio.run(measure(url, variant, c, args.number, args.rounds))
                    print(f"{variant:6} c={c:<3} {got.cpu_us:6.0f} µs CPU/req  "
                          f"{got.wall_us:6.0f} µs wall/req  Redis: {got.scripts:4.2f} "
                          f"scripts/req, {got.commands:4.1f} commands/req, "
                          f"{got.redis_cpu_us:4.0f} µs CPU/req", flush=True)  # fmt: skip
    finally:
        stop_redis_server(server)


if __name__ == "__main__":
    main()

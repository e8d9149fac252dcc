"""What a batched store script costs the broker's process: redis-py's pipeline, or the lean path.

    .venv/bin/python -m benchmarks.redis_batch_costs [--calls N] [--repeat R]

Starts a private redis-server, then sends the task-route claim script (``task_route_claim.lua``,
one key, two arguments) through ``BatchingRedis`` in batches of 1, 4 and 16 calls made in the
same event-loop turn (``asyncio.gather``), as the broker's requests make them. Two ways out:

* ``pipeline``: redis-py's ``Pipeline`` for a batch, its plain ``EVALSHA`` for a lone call (the
  batcher before decision 0072, still the one on Redis Cluster);
* ``wire``: packed once, written on a kept redis-py connection, read with its parser
  (``broker/stores/redis_wire.py``, decision 0072; still the one behind Sentinel);
* ``link``: packed once, written from the callback that ends the turn, replies parsed in the
  connection's protocol (``broker/stores/redis_link.py``, decision 0083).

Prints the client CPU (this process's user + system time) per call and the wall time per
batch, alternating the two R times and giving the range: the server's own CPU is not counted.
uvloop, as the broker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import uvloop

from broker.stores.redis_batch import (
    BatchingRedis,
    _Batcher,
    _LinkBatcher,
    _PipelineBatcher,
    _WireBatcher,
)
from broker.stores.redis_client import connection_pool, lua_source
from testkit.procs import free_port
from testkit.redis_process import start_redis_server, stop_redis_server

BATCHES = (1, 4, 16)
WAYS: dict[str, Callable[[BatchingRedis], _Batcher]] = {
    "pipeline": _PipelineBatcher,
    "wire": _WireBatcher,
    "link": _LinkBatcher,
}


async def _measure(client: BatchingRedis, batch: int, calls: int) -> tuple[float, float]:
    """(client CPU µs per call, wall µs per batch) of ``calls`` calls in batches of ``batch``."""
    claim = client.register_script(lua_source("task_route_claim.lua"))
    keys = [[f"bench:route:{{{n}}}"] for n in range(batch)]

    async def one_batch() -> None:
        await asyncio.gather(*(claim(keys=key, args=["owner-agent", 300]) for key in keys))

    for _ in range(50):  # connected, script loaded, caches warm
        await one_batch()
    rounds = max(calls // batch, 50)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await one_batch()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / (rounds * batch) * 1e6, wall / rounds * 1e6


Results = dict[tuple[str, int], list[tuple[float, float]]]


async def _run(url: str, calls: int, repeat: int) -> Results:
    results: Results = {}
    for _ in range(repeat):
        for batch in BATCHES:
            for way, batcher in WAYS.items():
                client = BatchingRedis.from_pool(connection_pool(url))
                client.batcher = batcher(client)
                try:
                    results.setdefault((way, batch), []).append(
                        await _measure(client, batch, calls)
                    )
                finally:
                    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000, help="calls per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="alternations of the two ways")
    options = parser.parse_args()
    port = free_port()
    server = start_redis_server(port)
    try:
        results = uvloop.run(_run(f"redis://127.0.0.1:{port}/0", options.calls, options.repeat))
    finally:
        stop_redis_server(server)
    print("| batch | way | client CPU per call, µs (median; range) | wall per batch, µs (median) |")
    print("|--:|---|--:|--:|")
    for batch in BATCHES:
        for way in WAYS:
            cpu = [c for c, _ in results[(way, batch)]]
            wall = [w for _, w in results[(way, batch)]]
            print(
                f"| {batch} | {way} | {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f})"
                f" | {statistics.median(wall):.0f} |"
            )


if __name__ == "__main__":
    main()

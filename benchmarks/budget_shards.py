"""What budget shards buy on Redis Cluster: Redis CPU per budgeted request, node by node.

``python -m benchmarks.budget_shards`` starts a private three-master Redis Cluster (the test
fixture's, from ``redis-server`` on PATH) and, for each ``[store] budget_shards`` in
``--shards`` (default 1,3,8), drives the broker's own budget ledger with ``--clients``
concurrent callers for ``--seconds``: each budgeted request reserves and settles against the
scopes a hop holds (``--scopes``: ``3x2`` = an agent of 50, a team of 5 and the request's own
tree, two limits each; ``1x1`` = one agent of 50, one limit). Before and after, every master's
``INFO cpu`` (whole server) and ``INFO commandstats`` (EVALSHA: the scripts alone) are read.

Reported per shard count: budget scripts per budgeted request; Redis CPU per budgeted request
summed over the nodes and on the busiest node; and the ceiling that busiest node sets, in
budgeted requests a second per Redis core (1 s / its CPU per request); and the CPU the calling
process (the broker's ledger and client) spends per budgeted request. The load generator is one
Python process, so throughput here is the generator's; CPU per request is what carries over.
Prints one JSON object; ``docs/scaling.md`` quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.budget_base import Reservation
from broker.stores.factory import open_backend
from testkit.redis_process import start_redis_cluster

LIMITS = {
    "3x2": (Limit("calls", "day", 10**12), Limit("tokens_in", "day", 10**15)),
    "1x1": (Limit("calls", "day", 10**12),),
}


def _scopes(kind: str, n: int) -> list[Scope]:
    limits = LIMITS[kind]
    if kind == "1x1":
        return [Scope("agent", f"a{n % 50}", limits)]
    return [Scope("agent", f"a{n % 50}", limits), Scope("team", f"t{n % 5}", limits),
            Scope("tree", uuid.uuid4().hex, limits)]  # fmt: skip


def _node_stats(client: redis.Redis) -> tuple[float, int, int]:
    """(CPU seconds, EVALSHA calls, EVALSHA µs) of one node."""
    cpu = client.info("cpu")
    stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    used = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    return used, int(stats["calls"]), int(stats["usec"])


async def _load(settings: StoreSettings, kind: str, clients: int, seconds: float) -> int:
    backend = open_backend(settings)
    ledger = backend.stores().budgets
    deadline = time.monotonic() + seconds
    done = 0

    async def caller(n: int) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            scopes = _scopes(kind, n)
            held = await ledger.reserve(scopes, Usage(calls=1, tokens_in=100), ttl_s=60)
            assert isinstance(held, Reservation), held  # the limits are far above the load
            await ledger.settle(held, Usage(calls=1, tokens_in=80))
            done += 1
            n += clients

    try:
        await backend.ping()
        await asyncio.gather(*(caller(n) for n in range(clients)))
    finally:
        await backend.close()
    return done


def measure(
    urls: list[str], shards: int, kind: str, clients: int, seconds: float
) -> dict[str, Any]:
    nodes = [redis.Redis.from_url(url) for url in urls]
    try:
        for node in nodes:
            node.config_resetstat()
        before = [_node_stats(node) for node in nodes]
        settings = StoreSettings(
            backend="redis", redis_mode="cluster", redis_url=",".join(urls),
            key_prefix=f"shards{shards}-{kind}", budget_shards=shards,
        )  # fmt: skip
        started, cpu_started = time.monotonic(), time.process_time()
        requests = asyncio.run(_load(settings, kind, clients, seconds))
        elapsed, client_cpu = time.monotonic() - started, time.process_time() - cpu_started
        after = [_node_stats(node) for node in nodes]
    finally:
        for node in nodes:
            node.close()
    per_node = []
    for url, (cpu0, calls0, usec0), (cpu1, calls1, usec1) in zip(urls, before, after, strict=True):
        per_node.append({
            "node": url.rsplit(":", 1)[-1],
            "scripts_per_request": round((calls1 - calls0) / requests, 2),
            "cpu_us_per_request": round((cpu1 - cpu0) / requests * 1e6, 1),
            "script_us_per_request": round((usec1 - usec0) / requests, 1),
        })  # fmt: skip
    busiest = max(per_node, key=lambda node: node["cpu_us_per_request"])
    busiest_scripts = max(per_node, key=lambda node: node["script_us_per_request"])
    return {
        "budget_shards": shards, "scopes": kind, "budgeted_requests": requests,
        "requests_per_s": round(requests / elapsed),
        # The caller's side (the broker's ledger, redis-py, the event loop) per request.
        "client_cpu_us_per_request": round(client_cpu / requests * 1e6, 1),
        "scripts_per_request": round(sum(n["scripts_per_request"] for n in per_node), 2),
        "cpu_us_per_request_all_nodes": round(sum(n["cpu_us_per_request"] for n in per_node), 1),
        "cpu_us_per_request_busiest_node": busiest["cpu_us_per_request"],
        "script_us_per_request_busiest_node": busiest_scripts["script_us_per_request"],
        "ceiling_requests_per_s_per_core": round(1e6 / busiest["cpu_us_per_request"]),
        "ceiling_scripts_only": round(1e6 / max(busiest_scripts["script_us_per_request"], 0.1)),
        "nodes": per_node,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget_shards",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--shards", default="1,3,8", help="comma-separated budget_shards")
    parser.add_argument("--scopes", default="3x2,1x1", help="comma-separated: 3x2, 1x1")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="budget-shards-") as tmp:
        cluster = start_redis_cluster(Path(tmp), masters=3)
        try:
            urls = cluster.url.split(",")
            results = [
                measure(urls, int(shards), kind, args.clients, args.seconds)
                for kind in args.scopes.split(",")
                for shards in args.shards.split(",")
            ]
        finally:
            cluster.stop()
    print(json.dumps({"command": "python -m benchmarks.budget_shards " + " ".join(argv or []),
                      "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

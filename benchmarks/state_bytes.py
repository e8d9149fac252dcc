"""Redis memory per task the broker keeps, and the budget scripts one Redis core can run.

``python -m benchmarks.state_bytes`` starts a private redis-server (``redis-server`` on PATH),
and through the broker's own Redis stores:

* claims ``--tasks`` task routes three ways and reads ``INFO memory`` ``used_memory`` before
  and after each: a finished task (route only, as the broker now keeps it), a running task in a
  one-task tree (route + tree), and the layout before state was sized by what is alive (the
  route as TaskRoute JSON + a one-task tree, every finished task kept that way). The
  difference divided by the count is bytes per task.
* runs the budget reserve and settle scripts from ``--clients`` concurrent callers for
  ``--seconds`` against one key set (every budget shares one slot, so this is what one
  cluster node can do) and reports scripts per second and Redis CPU per script (``INFO cpu``
  ``used_cpu_sys + used_cpu_user``): the single-slot ceiling.

* runs the reserve script from one caller and from 32 without and with ``[store]
  replica_acks = 1`` (a replica of the private server on loopback): what WAIT costs.

Prints one JSON object; ``docs/scaling.md`` quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
import redis

from broker.budgets.model import Limit, Scope, Usage
from broker.settings import StoreSettings
from broker.stores.base import TaskRoute
from broker.stores.factory import open_backend
from testkit.procs import free_port
from testkit.redis_process import start_node, stop_redis_server


def _start_redis(port: int, *extra: str) -> subprocess.Popen[bytes]:
    # Its own folder: a replica writes the primary's snapshot to disk while it syncs.
    folder = Path(tempfile.mkdtemp(prefix="state-bytes-redis-"))
    return start_node(port, folder, list(extra))


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _evalsha(client: redis.Redis) -> tuple[int, int]:
    """EVALSHA calls and the microseconds Redis spent running them (INFO commandstats)."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(stats["calls"]), int(stats["usec"])


def _cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def _claims(settings: StoreSettings, tasks: int, how: str) -> None:
    backend = open_backend(settings)
    stores = backend.stores()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        batch = 500
        for start in range(0, tasks, batch):
            claims: list[Coroutine[Any, Any, object]] = []
            for _ in range(start, min(tasks, start + batch)):
                task_id = str(uuid.uuid4())  # as agents name tasks
                route = TaskRoute(agent="echo", task_id=task_id, owner="planner")
                tree = uuid.uuid4().hex
                if how == "finished":
                    claims.append(stores.task_routes.claim(route, 3600, finished=True))
                elif how == "running":
                    claims.append(stores.task_routes.claim(route, 604800, tree))
                else:  # the earlier layout: JSON value, tree kept, 7 days
                    key = f"{settings.key_prefix}:route:{{4:echo:{task_id}}}"
                    client.set(key, msgspec.json.encode(route), ex=604800)
                    claims.append(stores.task_trees.add(tree, "echo", task_id, 604800))
            await asyncio.gather(*claims)
    finally:
        client.close()
        await backend.close()


def bytes_per_task(url: str, tasks: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    found = {}
    try:
        for how in ("finished", "running", "before"):
            client.flushall()
            time.sleep(0.2)
            before = _used(client)
            settings = StoreSettings(backend="redis", redis_url=url, key_prefix="a2ab")
            asyncio.run(_claims(settings, tasks, how))
            found[how] = round((_used(client) - before) / tasks, 1)
    finally:
        client.close()
    return found


async def _budget_load(
    settings: StoreSettings, clients: int, seconds: float
) -> tuple[int, list[float]]:
    backend = open_backend(settings)
    ledger = backend.stores().budgets
    # An agent, its team and its tree: the three scopes a hop holds at once.
    limits = (Limit("calls", "day", 10**12), Limit("tokens_in", "day", 10**15))
    deadline = time.monotonic() + seconds
    done = 0
    latencies: list[float] = []

    async def caller(n: int) -> None:
        nonlocal done
        scopes = [Scope("agent", f"a{n % 50}", limits), Scope("team", f"t{n % 5}", limits),
                  Scope("tree", uuid.uuid4().hex, limits)]  # fmt: skip
        while time.monotonic() < deadline:
            started = time.perf_counter()
            held = await ledger.reserve(scopes, Usage(calls=1, tokens_in=100), ttl_s=60)
            latencies.append(time.perf_counter() - started)
            await ledger.settle(held, Usage(calls=1, tokens_in=80))  # type: ignore[arg-type]
            done += 2

    try:
        await asyncio.gather(*(caller(n) for n in range(clients)))
    finally:
        await backend.close()
    return done, latencies


def budget_ceiling(url: str, clients: int, seconds: float) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
        client.config_resetstat()
        cpu_before, started = _cpu(client), time.monotonic()
        settings = StoreSettings(backend="redis", redis_url=url, key_prefix="a2ab")
        scripts, _ = asyncio.run(_budget_load(settings, clients, seconds))
        elapsed, cpu = time.monotonic() - started, _cpu(client) - cpu_before
        calls, usec = _evalsha(client)
    finally:
        client.close()
    return {
        "scripts": scripts,
        "scripts_per_s": round(scripts / elapsed),
        # The whole server process (network reads and writes included) ...
        "redis_cpu_share": round(cpu / elapsed, 2),
        "redis_cpu_us_per_script": round(cpu / scripts * 1e6, 1),
        "ceiling_scripts_per_s_one_core": round(scripts / cpu),
        # ... and the scripts alone (INFO commandstats): the floor no client batching lowers.
        "script_us_per_call": round(usec / max(calls, 1), 1),
        "ceiling_scripts_per_s_scripts_only": round(1e6 * calls / max(usec, 1)),
    }


def replica_ack_cost(url: str, seconds: float) -> dict[str, Any]:
    """Reserve latency (one caller) and scripts/s (32 callers) without and with
    ``replica_acks = 1``, on a primary with one replica on loopback."""
    found: dict[str, Any] = {}
    for acks in (0, 1):
        settings = StoreSettings(backend="redis", redis_url=url, key_prefix=f"acks{acks}",
                                 replica_acks=acks)  # fmt: skip
        _, latencies = asyncio.run(_budget_load(settings, 1, seconds / 2))
        scripts, _ = asyncio.run(_budget_load(settings, 32, seconds / 2))
        latencies.sort()
        found[f"acks_{acks}"] = {
            "reserve_p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "reserve_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
            "scripts_per_s_32_callers": round(scripts / (seconds / 2)),
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.state_bytes", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    port = free_port()
    process = _start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    servers = [process]
    try:
        # No replica yet: its replication backlog would count in used_memory.
        result: dict[str, Any] = {"bytes_per_task": bytes_per_task(url, args.tasks)}
        result["budget"] = budget_ceiling(url, args.clients, args.seconds)
        servers.append(_start_redis(free_port(), "--replicaof", "127.0.0.1", str(port)))
        time.sleep(1.0)  # the replica's first sync
        result["replica_acks"] = replica_ack_cost(url, args.seconds)
    finally:
        for server in servers:
            stop_redis_server(server)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

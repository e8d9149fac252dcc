"""How long an operator stop takes to hold on every replica (docs/governance.md).

    .venv/bin/python -m benchmarks.killswitch_propagation [--rounds 200] [--json out.json]

Starts a private redis-server, the benchmark upstream and three brokers on that Redis (the
default read cache, ``read_cache_ttl_s = 0.5``), registers the upstream as ``bench`` and a
caller, then keeps one client per replica sending ``SendMessage`` to ``bench`` back to back.
Each round makes one admin call on replica 0 and measures the time from the call being sent
to the last replica answering a request with the refusal (or, for the undo, with success):

- ``suspend``: ``POST /admin/agents/bench/suspend`` until all three answer AGENT_SUSPENDED;
- ``resume``: ``POST /admin/agents/bench/resume`` until all three answer the task again;
- ``kill``: ``POST /admin/kill`` until all three answer KILL_SWITCH_ENGAGED;
- ``lift``: ``DELETE /admin/kill`` until all three answer the task again.

Only answers to requests sent after the admin call count, so a figure includes one request's
time through a replica: the resolution of the measurement. Everything binds 127.0.0.1 and is
stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.measure import UNARY_BODY
from benchmarks.targets import AGENT, register_bench
from testkit.brokers import launch_broker
from testkit.config import BrokerConfig
from testkit.procs import all_stopped, free_port, launch_service
from testkit.redis_server import RedisServer, find_redis_server

REPLICAS = 3
ACTIONS = ("suspend", "resume", "kill", "lift")
ROUND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Cluster:
    brokers: list[str]
    admin_token: str
    caller_credential: str


def _config(redis: str, prefix: str) -> BrokerConfig:
    """What every replica shares (each gets its own port): the default read cache."""
    config = BrokerConfig(port=0).set("server", log_level="warning")
    return config.use_redis(redis, key_prefix=prefix).set("audit", backend="off")


@contextmanager
def cluster(work: Path) -> Iterator[Cluster]:
    if find_redis_server() is None:
        raise SystemExit("needs redis-server (apt-get install -y redis-server)")
    with RedisServer.running() as redis, all_stopped([]) as children:
        upstream = launch_service("benchmarks.upstream", name="upstream", log_dir=work)
        children.append(upstream)
        upstream.wait_ready()
        config = _config(redis.url, f"a2ab-prop-{secrets.token_hex(4)}")
        token = secrets.token_urlsafe(24)
        brokers = []
        for i in range(REPLICAS):
            replica = config.copy(port=free_port())
            brokers.append(
                launch_broker(replica, log_dir=work, name=f"broker-{i}", admin_token=token)
            )
            children.append(brokers[-1])
        for broker in brokers:
            broker.wait_ready()
        credential = register_bench(brokers[0], upstream.url)
        yield Cluster([b.url for b in brokers], token, credential)


class Poller:
    """Sends SendMessage to ``bench`` through one replica back to back; remembers, for each
    answer, when its request was sent and when the answer came, and whether it was refused."""

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]):
        self._session = session
        self._url = f"{url}/agents/{AGENT}/jsonrpc"
        self._headers = headers
        self.answers: list[tuple[float, float, str]] = []  # (sent, answered, outcome)

    async def run(self) -> None:
        while True:
            sent = time.perf_counter()
            async with self._session.post(self._url, data=UNARY_BODY, headers=self._headers) as r:
                body = await r.json(content_type=None)
            self.answers.append((sent, time.perf_counter(), _outcome(body)))
            if len(self.answers) > 1000:
                del self.answers[:500]

    def first(self, outcome: str, after: float) -> float | None:
        """When the first answer with ``outcome`` to a request sent after ``after`` came."""
        for sent, answered, got in self.answers:
            if sent >= after and got == outcome:
                return answered
        return None


def _outcome(body: Any) -> str:
    if isinstance(body, dict) and "result" in body:
        return "ok"
    try:
        return str(body["error"]["data"][0]["reason"])
    except (KeyError, IndexError, TypeError):
        return "unexpected"


_CALLS = {
    "suspend": ("POST", f"/admin/agents/{AGENT}/suspend", "AGENT_SUSPENDED"),
    "resume": ("POST", f"/admin/agents/{AGENT}/resume", "ok"),
    "kill": ("POST", "/admin/kill", "KILL_SWITCH_ENGAGED"),
    "lift": ("DELETE", "/admin/kill", "ok"),
}


async def _round(
    session: aiohttp.ClientSession, c: Cluster, pollers: list[Poller], action: str
) -> float:
    method, path, outcome = _CALLS[action]
    headers = {"Authorization": f"Bearer {c.admin_token}"}
    started = time.perf_counter()
    async with session.request(method, c.brokers[0] + path, headers=headers, json={}) as r:
        assert r.status == 200, await r.text()
    deadline = started + ROUND_TIMEOUT_S
    while True:
        seen = [p.first(outcome, started) for p in pollers]
        if all(t is not None for t in seen):
            return max(t for t in seen if t is not None) - started
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{action}: not every replica answered {outcome} in time")
        await asyncio.sleep(0.0005)


async def measure(c: Cluster, rounds: int) -> dict[str, list[float]]:
    headers = {"Content-Type": "application/json", "A2A-Version": "1.0",
               "Authorization": f"Bearer {c.caller_credential}"}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        pollers = [Poller(session, url, headers) for url in c.brokers]
        tasks = [asyncio.create_task(p.run()) for p in pollers]
        try:
            await asyncio.sleep(1.0)  # warm every replica's caches and connections
            found: dict[str, list[float]] = {a: [] for a in ACTIONS}
            for _ in range(rounds):
                for action in ACTIONS:
                    found[action].append(await _round(session, c, pollers, action))
            return found
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(found: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        action: {
            "rounds": len(v),
            "p50_ms": statistics.median(v) * 1000,
            "p99_ms": _percentile(v, 99) * 1000,
            "max_ms": max(v) * 1000,
        }
        for action, v in found.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.killswitch_propagation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=200, help="rounds of each action")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="a2a-prop-") as tmp, cluster(Path(tmp)) as c:
        figures = summary(asyncio.run(measure(c, args.rounds)))
    print(f"{REPLICAS} replicas on one Redis, {args.rounds} rounds per action; from the admin "
          "call on replica 0 to the last replica answering accordingly:")  # fmt: skip
    print("| action | rounds | p50 ms | p99 ms | max ms |\n|---|--:|--:|--:|--:|")
    for action, f in figures.items():
        row = f"| {f['rounds']:.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['max_ms']:.1f} |"
        print(f"| {action} {row}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

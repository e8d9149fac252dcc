"""Scenario (g): delegation chains of depth 1-5, through the broker and agent to agent.

Agents hop1..hop5 run in one ``benchmarks.chain_agent`` process; hopK calls hop(K+1) until
hop5, so wrk calling ``hop(6-d)`` makes a chain of depth d. Through the broker every hop is a
mediated request (the agent's own credential, the inbound ``A2A-Delegation`` token passed on);
directly, the agents call each other with no broker between them, the baseline. Each depth
is a target of its own for ``measure``, which counts the CPU of the broker's process tree only
(the agents are a separate process on the other core); for the direct rows it counts the agents.

The broker runs as in scenario (e): redis store, the whole pipeline, and the calls budget that
(e) gives the load generator given to every caller of the chain, so every hop is metered.
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.chain_agent import CREDENTIALS_ENV, hop_card, hop_name
from benchmarks.measure import UNARY, UNARY_BODY, Conditions, measure
from benchmarks.targets import CALLER, Env, Target, broker_config, redis_url
from benchmarks.upstream import card
from testkit.brokers import BrokerProcess
from testkit.config import BrokerConfig, budget
from testkit.procs import Process, closed_url, free_port, local_url

if TYPE_CHECKING:
    from benchmarks.run import Run

HOPS = 5
DEPTHS = (1, 2, 3, 4, 5)
CONCURRENCIES = (1, 16, 64)
LONG_POINT_S = 5.0  # points at least this long also measure c=64
# The broker's upstream pool (default 256 connections, shared by all agents) must hold every
# hop of every chain in flight: a chain of depth d keeps d forwarded requests open at once, so
# c=64 at depth 5 needs 320. Below that the nest deadlocks until the upstream timeout.
POOL_SIZE = 1024
_JSON_HEADERS = {"Content-Type": "application/json", "A2A-Version": "1.0"}


def _metered_chain(config: BrokerConfig, callers: list[str]) -> BrokerConfig:
    # As in (e) for the load generator, for every caller of the chain: each hop is metered.
    limit = [budget("calls", "lifetime", 1_000_000_000_000)]
    config.set("budgets.agents", **dict.fromkeys(callers, limit))
    return config.set("limits", upstream_pool_size=POOL_SIZE)


def _agents(env: Env, port: int, onward: str, credentials: dict[str, str], name: str) -> Process:
    argv = [sys.executable, "-m", "benchmarks.chain_agent", "--port", str(port)]
    argv += ["--hops", str(HOPS), "--onward", onward]
    child_env = {CREDENTIALS_ENV: json.dumps(credentials)}
    child = env.launch(name, argv, env.placement.rest, env=child_env)
    child.wait_ready(f"http://127.0.0.1:{port}/_ready")
    return child


def _stats(port: int) -> dict[str, int]:
    url = f"http://127.0.0.1:{port}/_stats"
    with urllib.request.urlopen(url, timeout=10) as resp:
        stats: dict[str, int] = json.loads(resp.read())
        return stats


@contextlib.contextmanager
def direct_chain(env: Env) -> Iterator[tuple[Callable[[int], Target], int]]:
    """The agents calling each other directly: the target for each depth, and their port."""
    port = free_port()
    child = _agents(env, port, f"http://127.0.0.1:{port}/{{name}}/jsonrpc", {}, "chain-direct")
    try:
        yield (lambda d: Target(_entry(f"http://127.0.0.1:{port}", d), _JSON_HEADERS, child)), port
    finally:
        child.stop()


def _entry(base: str, depth: int) -> str:
    return f"{base}/{hop_name(HOPS + 1 - depth)}/jsonrpc"


@contextlib.contextmanager
def broker_chain(
    env: Env, *, idle_timeout_s: float | None = None, slow_s: float = 0.0
) -> Iterator[tuple[Callable[[int], Target], int]]:
    """The broker (redis store) with hop1..hop5 and ``loadgen`` registered, and the agents;
    ``idle_timeout_s``: the broker's keep-alive timeout, if not the default; ``slow_s``: how
    long a broker under a profiler may take to start and answer the first chain."""
    port, agents_port = free_port(), free_port()
    redis = redis_url(env)
    callers = [CALLER, *(hop_name(k) for k in range(1, HOPS))]
    config = _metered_chain(broker_config(port, "redis", redis, 1, "none"), callers)
    if idle_timeout_s is not None:
        config.set("server", idle_timeout_s=idle_timeout_s)
    started = env.broker(config, "broker-chain", env.placement.sut)
    broker = started.process
    agents: Process | None = None
    try:
        started.wait_ready(**({"timeout": slow_s} if slow_s else {}))
        url = started.url
        credentials = _register(started, local_url(agents_port))
        caller = credentials.pop(CALLER)
        agents = _agents(env, agents_port, f"{url}/agents/{{name}}/jsonrpc", credentials,
                         "chain-broker-agents")  # fmt: skip
        headers = {**_JSON_HEADERS, "Authorization": f"Bearer {caller}"}
        private = redis if env.redis_note.startswith("a private") else ""
        check_linked(f"{url}/agents", headers, broker, max(slow_s, 10.0))
        yield (lambda d: Target(_entry(f"{url}/agents", d), headers, broker, private)), agents_port
    finally:
        if agents is not None:
            agents.stop()
        broker.stop()


def _register(broker: BrokerProcess, agents_url: str) -> dict[str, str]:
    """Register hop1..hop5 and the caller-only ``loadgen``; every one's credential."""
    credentials = {
        hop_name(k): broker.register(hop_name(k), hop_card(k, agents_url))
        for k in range(1, HOPS + 1)
    }
    credentials[CALLER] = broker.register(CALLER, card(CALLER, closed_url()))
    return credentials


def check_linked(
    base: str, headers: dict[str, str], broker: Process, timeout_s: float = 10.0
) -> None:
    """One chain of full depth by hand; the broker's log must show every hop in one task tree,
    each with the chain so far (so the agents passed the token on and nothing originated anew).
    """
    request = urllib.request.Request(  # noqa: S310 - loopback only
        _entry(base, HOPS), UNARY_BODY, headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - loopback
        resp.read()
    lines = [ln[ln.index("{") :] for ln in broker.log_tail(200_000).splitlines()
             if '"event":"mediated"' in ln]  # fmt: skip
    hops = sorted((json.loads(ln) for ln in lines[-HOPS:]), key=lambda r: len(r["chain"] or []))
    want = [[CALLER, *(hop_name(k) for k in range(1, n))] for n in range(1, HOPS + 1)]
    trees = {h["tree"] for h in hops}
    if [h["chain"] for h in hops] != want or len(trees) != 1 or None in trees:
        raise RuntimeError(f"the chain is not linked into one task tree: {hops}")
    print(f"  g          one tree of {HOPS} hops: chain {hops[-1]['chain']} -> "
          f"{hops[-1]['target']}", flush=True)  # fmt: skip


def _measure_depths(
    mode: str, target_for: Callable[[int], Target], agents_port: int, run: ChainRun
) -> list[dict[str, Any]]:
    points = []
    for d in DEPTHS:
        before = _stats(agents_port)
        measured = measure(
            f"g-{mode}-d{d}",
            target=target_for(d),
            workload=UNARY,
            concurrencies=run.concurrencies,
            seconds=run.seconds,
            work_dir=run.work_dir,
            conditions=run.conditions,
        )
        failed = _stats(agents_port)["onward_failed"] - before["onward_failed"]
        points += [{**p.as_dict(), "mode": mode, "depth": d, "chain_failures": failed}
                   for p in measured]  # fmt: skip
    return points


class ChainRun:
    """How (g)'s points are taken: the run's settings."""

    def __init__(
        self,
        seconds: float,
        work_dir: Path,
        conditions: Conditions,
        concurrencies: tuple[int, ...] = CONCURRENCIES,
    ) -> None:
        self.seconds = seconds
        self.work_dir = work_dir
        self.conditions = conditions
        self.concurrencies = concurrencies


def measure_chains(
    env: Env, seconds: float, work_dir: Path, conditions: Conditions
) -> list[dict[str, Any]]:
    """(g): depth 1-5, agent to agent and through the broker; one point dict per (depth, c)."""
    # c=64 needs long points: a 2 s point at depth 5 completes about as many requests as are
    # in flight at its end, whose CPU it counts, so --quick leaves it out.
    concurrencies = CONCURRENCIES if seconds >= LONG_POINT_S else CONCURRENCIES[:2]
    run = ChainRun(seconds, work_dir, conditions, concurrencies)
    with direct_chain(env) as (target_for, port):
        points = _measure_depths("direct", target_for, port, run)
    with broker_chain(env) as (target_for, port):
        points += _measure_depths("broker", target_for, port, run)
    return points


def scenario_g(run: Run) -> None:
    run.chain_points += measure_chains(run.env, run.seconds, run.work_dir, run.conditions)

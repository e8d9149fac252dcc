"""Instructions per metered call of the budget stage's Redis store path, counted by callgrind.

    .venv/bin/python -m benchmarks.budget_store_instructions [--concurrency 16]
        [--broker-ref main]

The budget stage (``HopBudget``) of scenario (e)'s caller (a calls budget) against a private
redis-server, in process, on uvloop, with nothing else of the pipeline around it: each metered
call reserves, then the "agent" marks its answer checked (the settle, decision 0078) and awaits
the task route's claim, as a unary A2A send does. C calls at a time. The script runs twice under
``valgrind --tool=callgrind``: 160 and 640 calls, each after the same warm-up; the difference of
the two totals, divided by 480, is what one metered call costs the store path (client side:
packing, writing, parsing, settling; Redis's own CPU is another process). How calls fall into
round trips at c=16 depends on timing, so that count moves by a few per cent from run to run;
at c=1 it does not (the live limits' clock is held, so no reload falls in the count).
``--broker-ref``: count the ``broker/`` of that commit (``git archive``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from benchmarks.hop_cpu import CALLS
from benchmarks.pipeline_instructions import NUMBERS, _totals
from benchmarks.targets import snapshot_broker
from broker.budgets.scopes import ConfiguredScopes
from broker.policy.roles import AgentRoles
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.settings import StoreSettings
from broker.stages.budget import HopBudget
from broker.stores.base import TaskRoute
from broker.stores.redis import RedisBackend
from broker.types import AgentRecord, MediationContext, Outcome, Reply
from testkit.procs import REPO_ROOT, free_port
from testkit.redis_process import start_redis_server, stop_redis_server

WARM_UP = 208
_TARGET = AgentRecord(name="target", card_json="{}", jsonrpc_url="http://127.0.0.1:9/rpc")


async def _no_body() -> bytes:
    return b""


async def run(url: str, number: int, concurrency: int) -> int:
    """``WARM_UP`` metered calls, then ``number``, ``concurrency`` at a time; how many calls the
    caller's budget has counted once every settle landed."""
    backend = RedisBackend(StoreSettings(backend="redis", redis_url=url, key_prefix="budget-instr"))
    stores = backend.stores()
    # The live limits are read once, their clock held: a reload is a round trip once a second
    # of wall time, and a slower (loaded) run under callgrind would count more of them.
    scopes = ConfiguredScopes(CALLS, stores.budget_limits, clock=lambda: 0.0)
    stage = HopBudget(stores, CALLS, scopes, AgentRoles(None))
    answered = Reply(200, b"{}")
    route = TaskRoute(agent="target", task_id="task", owner="caller")

    async def agent(ctx: MediationContext) -> Outcome:
        assert ctx.on_answer_checked is not None
        ctx.on_answer_checked()
        await stores.task_routes.claim(route, 3600)
        return answered

    async def many(count: int) -> None:
        for _ in range(count):
            ctx = MediationContext("jsonrpc", "target", "POST", headers={}, read_body=_no_body,
                                   caller="caller")  # fmt: skip
            ctx.operation, ctx.target = SEND_MESSAGE, _TARGET
            await stage(ctx, agent)

    async def round_of(count: int) -> None:
        await asyncio.gather(*(many(count // concurrency) for _ in range(concurrency)))

    await round_of(WARM_UP)
    gc.collect()
    await round_of(number)
    await stage.settles.drained()
    (status,) = await stores.budgets.status(scopes.for_status("caller", (), ""))
    await backend.close()
    return status.used


def _counted(
    url: str, number: int, concurrency: int, home: Path, out: Path
) -> subprocess.Popen[bytes]:
    """This script's ``--run`` under callgrind, importing ``broker`` from ``home``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "0"}
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
        "-m", "benchmarks.budget_store_instructions", "--run", str(number),
        "--concurrency", str(concurrency), "--url", url,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=home, env=env, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="metered calls in flight")
    parser.add_argument("--broker-ref", default="worktree", help="a git ref, or worktree")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the counted process
    parser.add_argument("--url", help=argparse.SUPPRESS)  # the counted process's Redis
    args = parser.parse_args()
    if args.run is not None:
        uvloop.run(run(args.url, args.run, args.concurrency))
        return
    port = free_port()
    server = start_redis_server(port)
    try:
        with tempfile.TemporaryDirectory(prefix="a2a-budget-instr-") as scratch:
            home = REPO_ROOT
            if args.broker_ref != "worktree":
                home = snapshot_broker(args.broker_ref, Path(scratch) / "tree")
            outs = [Path(scratch) / f"callgrind.{number}" for number in NUMBERS]
            totals = []
            for number, out in zip(NUMBERS, outs, strict=True):  # one after the other: one Redis
                url = f"redis://127.0.0.1:{port}/{len(totals)}"
                if _counted(url, number, args.concurrency, home, out).wait() != 0:
                    raise SystemExit("a counted run failed")
                totals.append(_totals(out))
    finally:
        stop_redis_server(server)
    low, high = totals
    per_call = (high - low) / (NUMBERS[1] - NUMBERS[0])
    print(f"broker {args.broker_ref} c={args.concurrency}: {per_call / 1e3:.1f} k instructions "
          f"per metered call on Redis ({low} and {high} in all)")  # fmt: skip


if __name__ == "__main__":
    main()

"""Scenario (g)'s broker under callgrind: the instructions a chain of each depth costs it, a
count that other work on the machine does not move (CPU seconds on a shared 2-core VM do).

    .venv/bin/python -m benchmarks.chain_instructions [--depths 1,2,5] [--concurrency 16]
        [--requests 120] [--broker-ref main]

The broker of scenario (g) (redis store, the whole pipeline, every caller of the chain metered,
the agents hop1..hop5 in one process) runs under ``valgrind --tool=callgrind``, about 50 times
slower. Per depth: a warm-up of 2c chains, then the counters zeroed while the broker is idle,
exactly N chains sent c at a time (a closed loop of our own, not wrk: a window that starts and
ends idle counts every instruction of those N chains and none of others), and the counters
dumped once the broker is idle again (settles, audit flushes). The window also counts what the
broker runs in the background meanwhile (timers, a few M instructions a second under callgrind;
not subtracted: an idle window taken after start-up overstates it), so send 100 chains or more
per depth. Prints, per depth, instructions
per chain and per hop the broker mediated (counted in its log), then the instructions the 2nd
and the deepest hop add. The keep-alive timeout is raised so that no agent's pooled connection
expires between windows (a failed onward call would leave a chain short of hops).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from benchmarks.measure import UNARY_BODY, UNARY_EXPECT
from benchmarks.scenario_chain import HOPS, broker_chain
from benchmarks.targets import Env, Placement, Target, environment, snapshot_broker
from testkit.procs import REPO_ROOT

_SLOW_START_S = 900.0  # the broker's start-up under callgrind
_MEDIATED = '"event":"mediated"'


async def _chains(url: str, headers: dict[str, str], number: int, concurrency: int) -> int:
    """Send ``number`` chains, ``concurrency`` at a time; how many did not complete."""
    gate = asyncio.Semaphore(concurrency)
    failed = 0
    timeout = aiohttp.ClientTimeout(total=_SLOW_START_S)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def one() -> None:
            nonlocal failed
            async with gate, session.post(url, data=UNARY_BODY, headers=headers) as resp:
                failed += resp.status != 200 or UNARY_EXPECT not in await resp.read()

        await asyncio.gather(*(one() for _ in range(number)))
    return failed


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=True, timeout=600)


def _instructions(dump: Path) -> int:
    found = re.search(r"^totals:\s+(\d+)", dump.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(found.group(1))


def _window(out: Path, pid: str, run: Callable[[], object]) -> tuple[int, float]:
    """Instructions the broker ran while ``run()`` ran and 2 s after it, and that time."""
    _control("--zero", pid)
    started = time.monotonic()
    run()
    time.sleep(2.0)  # the last settles and audit flushes
    elapsed = time.monotonic() - started
    dumps = set(out.glob(f"callgrind.{pid}.*"))
    _control("--dump", pid)
    dump = max(set(out.glob(f"callgrind.{pid}.*")) - dumps, key=lambda p: p.stat().st_mtime)
    return _instructions(dump), elapsed


def measure_depths(
    env: Env, out: Path, depths: list[int], concurrency: int, number: int
) -> dict[int, tuple[float, float, int]]:
    """Per depth: (instructions per chain, per mediated hop, chains that failed)."""
    results = {}
    with broker_chain(env, idle_timeout_s=_SLOW_START_S, slow_s=_SLOW_START_S) as (target_for, _):
        log = out / "broker-chain.log"
        pid = str(target_for(1).process.pid)
        for depth in depths:
            target = target_for(depth)
            asyncio.run(_chains(target.url, target.headers, 2 * concurrency, concurrency))
            time.sleep(1.0)
            before = log.read_text(errors="replace").count(_MEDIATED)
            failed = 0

            def send(target: Target = target) -> None:
                nonlocal failed
                failed = asyncio.run(_chains(target.url, target.headers, number, concurrency))

            count, _ = _window(out, pid, send)
            hops = log.read_text(errors="replace").count(_MEDIATED) - before
            results[depth] = (count / number, count / max(hops, 1), failed)
            print(f"  depth {depth}: {count / number / 1e6:7.3f} M instructions per chain, "
                  f"{count / max(hops, 1) / 1e6:6.3f} M per mediated hop ({hops} hops, "
                  f"{failed} chains failed)", flush=True)  # fmt: skip
    return results


def _added(results: dict[int, tuple[float, float, int]]) -> None:
    per_chain = {d: r[0] for d, r in results.items()}
    deepest = max(per_chain)
    if {1, 2, deepest - 1} <= per_chain.keys() and deepest > 2:
        second = per_chain[2] - per_chain[1]
        last = per_chain[deepest] - per_chain[deepest - 1]
        print(f"  the 2nd hop adds {second / 1e6:.3f} M, hop {deepest} {last / 1e6:.3f} M "
              f"({last / second - 1:+.1%})")  # fmt: skip
    elif {1, 2} <= per_chain.keys() and deepest > 2:
        further = (per_chain[deepest] - per_chain[2]) / (deepest - 2)
        second = per_chain[2] - per_chain[1]
        print(
            f"  the 2nd hop adds {second / 1e6:.3f} M; each hop from the 3rd to the "
            f"{deepest}th {further / 1e6:.3f} M on average ({further / second - 1:+.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", default="1,2,5", help=f"chain depths, 1..{HOPS}")
    parser.add_argument("--concurrency", type=int, default=16, help="chains in flight")
    parser.add_argument("--requests", type=int, default=120, help="chains per depth")
    parser.add_argument("--broker-ref", default="worktree", help="a git ref, or worktree")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    with tempfile.TemporaryDirectory(prefix="a2a-chain-instr-") as tmp:
        out = Path(tmp)
        src = REPO_ROOT
        if args.broker_ref != "worktree":
            src = snapshot_broker(args.broker_ref, out / "broker-src")
        callgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p")
        with environment(out, Placement(), 1, src) as env:
            env.broker_prefix = callgrind
            _added(measure_depths(env, out, depths, args.concurrency, args.requests))


if __name__ == "__main__":
    main()

"""What the circuit breaker and bulkhead cost a call while the circuit is closed.

    .venv/bin/python benchmarks/containment_costs.py [--number N]

Runs the A2A containment stage in process around an answer that is already there, against a
stage that only passes the call on, and prints µs per call (best of 5 runs of N, one core) and
the difference: the stage's own cost, with no store round trip. (d-containment) in
``benchmarks.run --scenarios d`` measures the same over a whole broker, where it is within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from broker.containment.stages import AgentContainment
from broker.settings_containment import ContainmentSettings
from broker.stores.base import AgentRecord
from broker.types import MediationContext, Outcome, Reply, StreamReply

REPLY = Reply(200, b"{}")


async def _body() -> bytes:
    return b""


async def _answer(ctx: MediationContext) -> Outcome:
    ctx.upstream_status = 200
    return REPLY


async def _stream(ctx: MediationContext) -> Outcome:
    ctx.upstream_status = 200
    return StreamReply(_events())


async def _events():  # type: ignore[no-untyped-def]
    yield b"data: {}\r\n\r\n"


async def _pass_on(ctx: MediationContext, call_next: object) -> Outcome:
    return await call_next(ctx)  # type: ignore[operator, no-any-return]


async def _per_call_us(stage: object, answer: object, number: int, stream: bool) -> float:
    ctx = MediationContext(
        "jsonrpc", "bench", "POST", headers={}, read_body=_body, caller="loadgen"
    )
    ctx.target = AgentRecord(name="bench", card_json="{}")
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            outcome = await stage(ctx, answer)  # type: ignore[operator]
            if stream:
                async for _event in outcome.events:
                    pass
        best = min(best, time.perf_counter() - started)
    return best / number * 1e6


async def _main(number: int) -> None:
    containment = AgentContainment(ContainmentSettings())
    for kind, answer, stream in (("unary", _answer, False), ("stream", _stream, True)):
        base = await _per_call_us(_pass_on, answer, number, stream)
        staged = await _per_call_us(containment, answer, number, stream)
        print(
            f"{kind:<7} pass-through {base:6.2f} µs/call   breaker+bulkhead {staged:6.2f} µs/call"
            f"   added {staged - base:+6.2f} µs/call"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=50_000)
    asyncio.run(_main(parser.parse_args().number))


if __name__ == "__main__":
    main()

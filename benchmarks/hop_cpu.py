"""CPU and Redis round trips per request of a hop that presents a delegation token, in process.

    .venv/bin/python -m benchmarks.hop_cpu [--number N] [--rounds R] [--concurrency C]

The whole A2A pipeline (``broker.pipeline.a2a.a2a_stages``, as ``benchmarks.pipeline_cpu``
builds it) on the redis store over a private redis-server, policy ``allow_all``, auditing off,
the caller metered by a calls budget as in scenario (e), in front of the fake transport
answering every ``SendMessage`` with a new completed task. Two kinds of hop, R rounds of N each
(C at a time) after a warm-up: ``origin`` (no token: the first hop of a chain) and ``token``
(the caller presents a token the broker minted for it, a fresh one per request, as a further hop
of a chain does). Prints, per kind, the best round's CPU µs per request (``time.process_time``:
the broker's side, Redis's own CPU not counted), Redis socket reads (round trips) and scripts
(``EVALSHA``) per request. No HTTP: other processes on a shared machine move it far less than
wrk's figures. Measure another commit's broker by putting its ``broker/`` first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import time
from typing import Any

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.pipeline_cpu import BODY, HEADERS, bench_parts
from broker.budgets.scopes import ConfiguredScopes
from broker.delegation.tokens import TokenMinter, hop_scope
from broker.identity.keys import BrokerKeys
from broker.pipeline.a2a import A2aParts, a2a_stages
from broker.pipeline.stage import fold
from broker.settings import (
    BudgetLimitSettings,
    BudgetSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from broker.stores.cache import with_read_cache
from broker.stores.redis import RedisBackend
from broker.stores.redis_batch import _LinkBatcher
from broker.types import MediationContext
from testkit.procs import free_port
from testkit.redis_process import start_redis_server, stop_redis_server

CALLS = BudgetSettings(
    agents={"caller": (BudgetLimitSettings(metric="calls", window="lifetime", limit=10**12),)}
)


async def _parts(url: str, prefix: str) -> tuple[A2aParts, TokenMinter]:
    settings = Settings(server=ServerSettings(public_url="http://broker.test"), budgets=CALLS)
    # The registry and credential reads cached, as the runtime does (broker.runtime.control).
    backend = RedisBackend(StoreSettings(backend="redis", redis_url=url, key_prefix=prefix))
    stores = with_read_cache(backend.stores(), settings.store.read_cache_ttl_s)
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    return await bench_parts(settings, stores, keys, token_ttl_s=3600)


def hop_headers(minter: TokenMinter, kind: str) -> dict[str, str]:
    """A request's headers for a hop of ``kind``: ``origin`` starts a tree; ``token`` is a
    further hop of a chain, presenting the token minted for it."""
    if kind == "origin":
        return HEADERS
    token, _ = minter.mint_origin("origin", "caller", hop_scope("SendMessage"))
    return {**HEADERS, "a2a-delegation": token}


def _redis_counts(client: redis.Redis) -> tuple[int, int]:
    reads = int(client.info("stats")["total_reads_processed"])
    scripts = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    return reads, int(scripts)


async def measure(
    url: str, kind: str, number: int, rounds: int, concurrency: int, *, prefix: str = "hop-cpu"
) -> tuple[float, float, float]:
    """(best CPU µs per request, Redis reads and scripts per request in that round)."""
    parts, minter = await _parts(url, prefix)
    call = fold(a2a_stages(parts))
    probe = redis.Redis.from_url(url)

    async def body() -> bytes:
        return BODY

    async def many(prepared: list[dict[str, str]]) -> None:
        for headers in prepared:
            ctx = MediationContext("jsonrpc", "target", "POST", headers=headers, read_body=body)
            outcome = await call(ctx)
            if outcome.status != 200 or b'"result"' not in getattr(outcome, "body", b""):
                raise SystemExit(f"refused: {getattr(outcome, 'body', b'')[:300]!r}")

    async def round_of(count: int) -> None:
        share = count // concurrency
        batches = [[hop_headers(minter, kind) for _ in range(share)] for _ in range(concurrency)]
        await asyncio.gather(*(many(b) for b in batches))

    await round_of(200)
    best: tuple[float, float, float] | None = None
    for _ in range(rounds):
        gc.collect()
        await asyncio.sleep(0.05)  # the last round's settles land
        before = _redis_counts(probe)
        started = time.process_time()
        await round_of(number)
        cpu = (time.process_time() - started) / number * 1e6
        after = _redis_counts(probe)
        point = (cpu, (after[0] - before[0] - 2) / number, (after[1] - before[1]) / number)
        best = point if best is None or cpu < best[0] else best
    probe.close()
    assert best is not None
    return best


async def batch_sizes(
    url: str, kind: str, number: int, *, prefix: str = "hop-cpu"
) -> list[list[int]]:
    """The store's script batches (round trips) of each of ``number`` requests made one after
    the other after a warm-up: per request, how many scripts each batch it sent held. Counted
    at the batcher, so it depends on how calls are queued, not on timing."""
    parts, minter = await _parts(url, prefix)
    # The budget's live limits are re-read once they are a second old: a read of its own in
    # the middle of a hop (between the fan-out slot, sent ahead, and the reserve), which on a
    # slow machine would fall within the counted requests and split their batch. Their clock
    # stands still here, so the count depends on how calls are queued, not on how fast.
    parts = dataclasses.replace(
        parts, budget_scopes=ConfiguredScopes(
            parts.settings.budgets, parts.stores.budget_limits, clock=lambda: 0.0
        ),
    )  # fmt: skip
    call = fold(a2a_stages(parts))
    sent: list[int] = []
    original = _LinkBatcher._write

    def counted(self: _LinkBatcher, calls: list[Any], loads: Any) -> None:
        sent.append(len(calls))
        original(self, calls, loads)

    async def one() -> None:
        headers = hop_headers(minter, kind)
        ctx = MediationContext("jsonrpc", "target", "POST", headers=headers, read_body=_body)
        outcome = await call(ctx)
        if outcome.status != 200:
            raise AssertionError(f"refused: {getattr(outcome, 'body', b'')[:300]!r}")

    for _ in range(5):  # warm-up: scripts loaded, reads cached
        await one()
    await asyncio.sleep(0.05)
    shapes = []
    _LinkBatcher._write = counted  # type: ignore[method-assign]
    try:
        for _ in range(number):
            sent.clear()
            await one()
            await asyncio.sleep(0.01)  # anything sent after the answer is counted with it
            shapes.append(list(sent))
    finally:
        _LinkBatcher._write = original  # type: ignore[method-assign]
    return shapes


async def _body() -> bytes:
    return BODY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best is reported)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--kinds", default="origin,token", help="origin, token or both")
    args = parser.parse_args()
    port = free_port()
    server = start_redis_server(port)
    try:
        for kind in args.kinds.split(","):
            url = f"redis://127.0.0.1:{port}/0"
            cpu, reads, scripts = asyncio.run(
                measure(url, kind, args.number, args.rounds, args.concurrency)
            )
            print(f"{kind:6} c={args.concurrency:<3} {cpu:6.0f} µs CPU/req  {reads:5.2f} Redis "
                  f"reads/req  {scripts:5.2f} scripts/req", flush=True)  # fmt: skip
    finally:
        stop_redis_server(server)


if __name__ == "__main__":
    main()

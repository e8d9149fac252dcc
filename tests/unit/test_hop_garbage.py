"""A mediated hop's state is freed when the hop ends (reference counting), never left in a
reference cycle for the cyclic GC: at depth d of a chain at concurrency c the broker holds d*c
hops in flight, and every cycle a hop leaves makes the GC's young-generation runs (each walking
every object allocated since the last) more frequent, a cost per hop that no profile of the
hop's own code shows. Counted with the cyclic GC off, so the count does not depend on timing.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.hop_cpu import hop_headers
from benchmarks.pipeline_cpu import BODY, bench_parts
from broker.delegation.tokens import TokenMinter
from broker.identity.keys import BrokerKeys
from broker.pipeline.a2a import a2a_stages
from broker.pipeline.stage import fold, started
from broker.settings import (
    BudgetLimitSettings,
    BudgetSettings,
    ServerSettings,
    Settings,
)
from broker.stores.memory import MemoryBackend
from broker.types import MediationContext, Outcome

# The caller metered, as in the benchmarks' scenario (e): the budget's settle runs too.
CALLS = BudgetSettings(
    agents={"caller": (BudgetLimitSettings(metric="calls", window="lifetime", limit=10**9),)}
)


@pytest.fixture
def cyclic_garbage() -> Iterator[list[object]]:
    """Filled, once the test is done, with what the cyclic GC found unreachable meanwhile."""
    found: list[object] = []
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


def _collected(found: list[object]) -> Counter[str]:
    gc.collect()
    found.extend(gc.garbage)
    return Counter(type(o).__qualname__ for o in found)


async def _body() -> bytes:
    return BODY


async def _hops(kind: str) -> Callable[[int], Awaitable[None]]:
    """The whole A2A pipeline (memory store, the fake agent): ``number`` hops of ``kind``."""
    settings = Settings(server=ServerSettings(public_url="http://broker.test"), budgets=CALLS)
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    parts, minter = await bench_parts(settings, MemoryBackend().stores(), keys)
    call = fold(a2a_stages(parts))
    return lambda number: _run(call, minter, kind, number)


async def _run(
    call: Callable[[MediationContext], Awaitable[Outcome]],
    minter: TokenMinter,
    kind: str,
    number: int,
) -> None:
    for _ in range(number):
        headers = hop_headers(minter, kind)
        ctx = MediationContext("jsonrpc", "target", "POST", headers=headers, read_body=_body)
        outcome = await call(ctx)
        assert outcome.status == 200
    for _ in range(3):  # the settles and releases started by the last hop end
        await asyncio.sleep(0)


@pytest.mark.parametrize("kind", ["origin", "token"])
async def test_a_hop_leaves_no_reference_cycle(kind: str, cyclic_garbage: list[object]) -> None:
    hops = await _hops(kind)
    await hops(1)  # the first hop builds what every later one shares
    gc.collect()
    gc.garbage.clear()
    await hops(5)
    kinds = _collected(cyclic_garbage)
    assert kinds["MediationContext"] == 0, kinds
    assert kinds["coroutine"] == 0, kinds


async def test_a_started_coroutine_and_its_future_are_freed_once_done(
    cyclic_garbage: list[object],
) -> None:
    waited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> int:
        value = await waited
        await asyncio.sleep(0)  # a bare yield too
        return value

    outcome = started(work())
    waited.set_result(1)
    assert await outcome == 1
    del outcome
    assert _collected(cyclic_garbage) == Counter()

"""The hop token's signature is made while the budget's reserve is out (decision 0088): after
the reserve's batch was written, before its reply is awaited; nothing is forwarded before the
reserve is granted, and a refused hop's token is never sent. The batches stay those of
decision 0078 (``test_settle_with_claim``). Real Redis; the order is counted at the batcher and
at the signature, so it depends on how calls are queued, not on how fast anything is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stage_kit import MINTER, ctx

from benchmarks.hop_cpu import _parts, hop_headers
from benchmarks.pipeline_cpu import BODY
from broker.budgets.scopes import ConfiguredScopes
from broker.delegation.tokens import UnsignedToken
from broker.errors import BudgetExhaustedError
from broker.pipeline.a2a import a2a_stages
from broker.pipeline.stage import fold
from broker.policy.roles import AgentRoles
from broker.settings import BudgetLimitSettings, BudgetSettings, StoreSettings
from broker.stages.budget import HopBudget
from broker.stages.mint import MintHopToken
from broker.stores.memory import MemoryBackend
from broker.stores.redis import RedisBackend
from broker.stores.redis_batch import _LinkBatcher
from broker.types import MediationContext, Outcome, Reply

ONE_CALL_A_DAY = BudgetSettings(
    agents={"a": (BudgetLimitSettings(metric="calls", window="day", limit=1),)}
)

TEN_CALLS_A_DAY = BudgetSettings(
    agents={"a": (BudgetLimitSettings(metric="calls", window="day", limit=10),)}
)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happens, in order: each batch written (``write:<scripts>``), each signature."""
    seen: list[str] = []
    write, sign = _LinkBatcher._write, UnsignedToken.sign

    def counted_write(self: _LinkBatcher, calls: list[Any], loads: Any) -> None:
        seen.append(f"write:{len(calls)}")
        write(self, calls, loads)

    def counted_sign(self: UnsignedToken) -> str:
        seen.append("sign")
        return sign(self)

    monkeypatch.setattr(_LinkBatcher, "_write", counted_write)
    monkeypatch.setattr(UnsignedToken, "sign", counted_sign)
    return seen


@pytest.mark.parametrize(("kind", "shape"), [("origin", [1, 2]), ("token", [2, 3])])
async def test_the_token_is_signed_after_the_reserve_went_out_and_the_batches_are_unchanged(
    redis_url: str, redis_key_prefix: str, events: list[str], kind: str, shape: list[int]
) -> None:
    parts, minter = await _parts(redis_url, redis_key_prefix)
    call = fold(a2a_stages(parts))

    async def body() -> bytes:
        return BODY

    for n in range(8):
        headers = hop_headers(minter, kind)  # its own signature is not the hop's: not counted
        events.clear()
        outcome = await call(MediationContext("jsonrpc", "target", "POST", headers=headers,
                                              read_body=body))  # fmt: skip
        assert outcome.status == 200
        await asyncio.sleep(0.01)  # the claim's batch, written after the answer
        if n >= 3:  # warmed up: the scripts are loaded, the reads cached
            # One signature, made after the reserve's batch was written and before the
            # claim's (which needs the answer, which needs the token).
            assert events == [f"write:{shape[0]}", "sign", f"write:{shape[1]}"]


def _budget(stores: Any, budgets: BudgetSettings = ONE_CALL_A_DAY) -> HopBudget:
    return HopBudget(stores, budgets, ConfiguredScopes(budgets, stores.budget_limits),
                     AgentRoles(None))  # fmt: skip


async def _minted(call: MediationContext) -> MediationContext:
    async def keep(c: MediationContext) -> Outcome:
        return Reply(200, b"{}")

    await MintHopToken(MINTER, 600.0)(call, keep)
    return call


async def test_a_refused_reserve_forwards_nothing_and_the_signed_token_goes_nowhere(
    redis_url: str, redis_key_prefix: str, events: list[str]
) -> None:
    backend = RedisBackend(StoreSettings(backend="redis", redis_url=redis_url,
                                         key_prefix=redis_key_prefix))  # fmt: skip
    stage = _budget(backend.stores())
    forwarded: list[str] = []

    async def forward(c: MediationContext) -> Outcome:
        forwarded.append(c.hop_signed())
        return Reply(200, b"{}")

    try:
        granted = await _minted(ctx())
        assert granted.hop_unsigned is not None  # minted, not yet signed
        await stage(granted, forward)
        assert forwarded == [granted.hop_token] and granted.hop_token
        await stage.settles.drained()
        refused = await _minted(ctx())
        events.clear()
        with pytest.raises(BudgetExhaustedError):
            await stage(refused, forward)
        # Signed while the refusal was on its way; never forwarded.
        assert "sign" in events and len(forwarded) == 1
    finally:
        await backend.close()


async def test_without_a_round_trip_to_wait_for_the_token_is_signed_when_it_is_forwarded(
    events: list[str],
) -> None:
    stage = _budget(MemoryBackend().stores(), TEN_CALLS_A_DAY)
    seen: list[list[str]] = []

    async def forward(c: MediationContext) -> Outcome:
        seen.append(list(events))
        c.hop_signed()
        return Reply(200, b"{}")

    await stage(await _minted(ctx()), forward)  # the first reads the live limits: a wait
    call = await _minted(ctx())
    events.clear()
    seen.clear()
    await stage(call, forward)
    # The memory store reserved at once: nothing was signed before the forward asked.
    assert seen == [[]] and events == ["sign"] and call.hop_unsigned is None

"""The global kill switch's store: the same contract on every backend (memory, redis)."""

from __future__ import annotations

import asyncio

from broker.stores.base import Stores
from broker.stores.kill_switch import KillSwitchState


def state(by: str, at: float = 1.0) -> KillSwitchState:
    return KillSwitchState(engaged_at=at, by=by, reason=f"reason of {by}")


async def test_lifted_until_engaged_and_lifted_again(stores: Stores) -> None:
    switch = stores.kill_switch
    assert await switch.state() is None
    assert await switch.engage(state("ops")) == (state("ops"), True)
    assert await switch.state() == state("ops")
    assert await switch.lift() is True
    assert await switch.state() is None
    assert await switch.lift() is False


async def test_a_second_engagement_keeps_the_first(stores: Stores) -> None:
    switch = stores.kill_switch
    await switch.engage(state("first", 1.0))
    assert await switch.engage(state("second", 2.0)) == (state("first", 1.0), False)
    assert await switch.state() == state("first", 1.0)
    await switch.lift()


async def test_racing_engagements_make_exactly_one_winner(stores: Stores) -> None:
    switch = stores.kill_switch
    results = await asyncio.gather(*(switch.engage(state(f"op{i}")) for i in range(20)))
    winners = [s for s, newly in results if newly]
    assert len(winners) == 1
    assert {s for s, _ in results} == {winners[0]}
    assert await switch.state() == winners[0]
    await switch.lift()

"""The global kill switch's stage: every call refused while engaged, except a CancelTask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from broker.containment.global_kill import GlobalKillSwitch, RefuseWhileKilled
from broker.errors import KillSwitchEngagedError
from broker.stores.kill_switch import MemoryKillSwitchStore


@dataclass
class Operation:
    name: str


@dataclass
class Ctx:
    operation: Operation | None = None


async def passed(ctx: Any) -> str:
    return "forwarded"


async def nothing() -> None:
    return None


async def test_engaged_it_refuses_every_call_but_a_cancel_and_lifted_it_lets_all_pass() -> None:
    switch = GlobalKillSwitch(MemoryKillSwitchStore(), nothing)
    stage = RefuseWhileKilled(switch)
    llm_call, send, cancel = Ctx(), Ctx(Operation("SendMessage")), Ctx(Operation("CancelTask"))
    assert await stage(send, passed) == "forwarded"
    state, newly = await switch.engage("admin", "drill")
    assert newly and (state.by, state.reason) == ("admin", "drill")
    for ctx in (llm_call, send):
        with pytest.raises(KillSwitchEngagedError) as refused:
            await stage(ctx, passed)
        assert refused.value.metadata == {"engaged_by": "admin"}
    assert await stage(cancel, passed) == "forwarded"
    assert await switch.lift() is True
    assert await stage(llm_call, passed) == "forwarded"

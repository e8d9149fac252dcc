"""``fold`` leaves out a stage that passes through under its settings; the answer is the same."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from broker.approvals.stages import CostOverThreshold, TreeBudgetThreshold
from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder
from broker.audit.trail import AuditTrail
from broker.containment.stages import AgentContainment, ProviderBreaker
from broker.identity.keys import BrokerKeys
from broker.llm.audit import LlmAudit
from broker.llm.stages import AgentRateLimit
from broker.pipeline.stage import fold
from broker.settings import Settings
from broker.settings_containment import BreakerSettings, ContainmentSettings
from broker.settings_llm import LlmSettings
from broker.stages.audit import AuditForward
from broker.types import Outcome, Reply

Next = Callable[[list[str]], Awaitable[Outcome]]


class _Step:
    def __init__(self, name: str, *, passes_through: bool | None = None) -> None:
        self.name = name
        if passes_through is not None:
            self.passes_through = passes_through

    async def __call__(self, seen: list[str], call_next: Next) -> Outcome:
        seen.append(self.name)
        return await call_next(seen)


async def _answer(seen: list[str], call_next: Next) -> Outcome:
    seen.append("answer")
    return Reply(200, b"ok")


def test_a_stage_that_passes_through_is_not_entered_and_the_answer_is_the_same() -> None:
    chain = fold([_Step("a"), _Step("skip", passes_through=True), _Step("b"), _answer])
    seen: list[str] = []
    reply = asyncio.run(chain(seen))  # type: ignore[arg-type]
    assert isinstance(reply, Reply) and reply.status == 200 and reply.body == b"ok"
    assert seen == ["a", "b", "answer"]


def test_only_a_true_passes_through_leaves_a_stage_out() -> None:
    chain = fold([_Step("kept", passes_through=False), _Step("plain"), _answer])
    seen: list[str] = []
    asyncio.run(chain(seen))  # type: ignore[arg-type]
    assert seen == ["kept", "plain", "answer"]


def test_the_stages_pass_through_exactly_when_their_settings_turn_them_off() -> None:
    async def no_scopes(ctx: object, tree: str) -> tuple[()]:
        return ()

    assert AgentRateLimit(None, LlmSettings()).passes_through  # type: ignore[arg-type]
    assert not AgentRateLimit(None, LlmSettings(rate_per_s=5)).passes_through  # type: ignore[arg-type]
    assert CostOverThreshold(0).passes_through
    assert not CostOverThreshold(0.5).passes_through
    off = TreeBudgetThreshold[object](None, 0, lambda _: None, no_scopes)  # type: ignore[arg-type]
    on = TreeBudgetThreshold[object](None, 80, lambda _: None, no_scopes)  # type: ignore[arg-type]
    assert off.passes_through and not on.passes_through
    assert not ProviderBreaker(ContainmentSettings()).passes_through
    off_settings = ContainmentSettings(breaker=BreakerSettings(enabled=False))
    assert ProviderBreaker(off_settings).passes_through
    # The A2A containment: only with the breaker off and no agent capped.
    assert not AgentContainment(ContainmentSettings()).passes_through
    assert not AgentContainment(off_settings).passes_through  # the default cap: 128
    uncapped = msgspec.structs.replace(off_settings, max_concurrent_per_agent=0)
    assert AgentContainment(uncapped).passes_through
    one_capped = msgspec.structs.replace(uncapped, agent_max_concurrent={"a": 2})
    assert not AgentContainment(one_capped).passes_through
    none_capped = msgspec.structs.replace(uncapped, agent_max_concurrent={"a": 0})
    assert AgentContainment(none_capped).passes_through
    breaking = msgspec.structs.replace(ContainmentSettings(), max_concurrent_per_agent=0)
    assert not AgentContainment(breaking).passes_through


class _Kept(AuditRecorder):
    """No trail, but keeps what it is given (as the tests' recorders do)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.kept: list[Mapping[str, Any]] = []

    def record_soon(self, fields: Mapping[str, Any]) -> None:
        self.kept.append(fields)


async def test_the_audit_stage_passes_through_only_when_its_records_would_be_dropped(
    tmp_path: Path,
) -> None:
    assert AuditRecorder(None).drops_records
    assert AuditForward[Any](AuditRecorder(None)).passes_through  # [audit] backend = "off"
    assert not AuditForward[Any](_Kept()).passes_through
    # An LLM call's outcome record also counts its tokens: built even with auditing off.
    assert not AuditForward[Any](AuditRecorder(None), LlmAudit()).passes_through
    trail = await AuditTrail.open(
        FileAuditLog(tmp_path, fsync=False), "unit", BrokerKeys.from_settings(Settings())
    )
    recorder = AuditRecorder(trail)
    try:
        assert not recorder.drops_records
        assert not AuditForward[Any](recorder).passes_through
    finally:
        await recorder.close()

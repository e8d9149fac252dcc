"""The mediation pipelines: their order is written in one place each (runtime.pipeline_stages,
llm.gateway.llm_stages) and folded once at start-up by ``fold``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from broker.types import Outcome

Ctx = TypeVar("Ctx")


def fold(
    stages: Sequence[Callable[[Ctx, Callable[[Ctx], Awaitable[Outcome]]], Awaitable[Outcome]]],
) -> Callable[[Ctx], Awaitable[Outcome]]:
    """Compose stages so each receives the rest as ``call_next``; the last must answer itself."""

    async def end(ctx: Ctx) -> Outcome:
        raise RuntimeError("the last stage of a pipeline must not call call_next")

    handler: Callable[[Ctx], Awaitable[Outcome]] = end
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(
    stage: Callable[[Ctx, Callable[[Ctx], Awaitable[Outcome]]], Awaitable[Outcome]],
    call_next: Callable[[Ctx], Awaitable[Outcome]],
) -> Callable[[Ctx], Awaitable[Outcome]]:
    async def run(ctx: Ctx) -> Outcome:
        return await stage(ctx, call_next)

    return run

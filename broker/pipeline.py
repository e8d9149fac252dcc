"""The mediation pipeline: its order, written in one place, folded once at start-up."""

from __future__ import annotations

from collections.abc import Sequence

from broker.types import CallNext, MediationContext, Outcome, Stage


def fold(stages: Sequence[Stage]) -> CallNext:
    """Compose stages so each receives the rest as ``call_next``; the last must answer itself."""

    async def end(ctx: MediationContext) -> Outcome:
        raise RuntimeError("the last stage of the pipeline must not call call_next")

    handler: CallNext = end
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, call_next: CallNext) -> CallNext:
    async def run(ctx: MediationContext) -> Outcome:
        return await stage(ctx, call_next)

    return run

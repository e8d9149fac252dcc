"""``benchmarks.pipeline_instructions``' counted run, without callgrind: every request goes the
whole metered path (each is charged to the caller's calls budget, as in scenario (e))."""

from __future__ import annotations

from benchmarks.pipeline_instructions import WARM_UP, run


async def test_every_counted_request_is_answered_and_charged() -> None:
    assert await run(32, 16) == WARM_UP + 32

"""``started``: a coroutine run eagerly up to its first suspension, its outcome a future, as a
task's would be; what it queues comes ahead of what its caller queues next."""

from __future__ import annotations

import asyncio

import pytest

from broker.pipeline.stage import started


async def test_it_runs_at_once_up_to_its_first_wait_and_then_as_that_completes() -> None:
    order: list[str] = []
    waited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> int:
        order.append("started")
        value = await waited
        await asyncio.sleep(0)  # a bare yield too
        order.append("finished")
        return value + 1

    outcome = started(work())
    order.append("caller goes on")
    assert order == ["started", "caller goes on"] and not outcome.done()
    waited.set_result(41)
    assert await outcome == 42
    assert order == ["started", "caller goes on", "finished"]


async def test_a_coroutine_that_never_waits_is_done_at_once() -> None:
    async def work() -> str:
        return "done"

    outcome = started(work())
    assert outcome.done() and outcome.result() == "done"


async def test_its_failure_and_its_cancellation_are_the_future_s() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await started(fails())
    waited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        await waited

    outcome = started(waits())
    waited.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome
    assert outcome.cancelled()


async def test_what_it_queues_resolves_before_what_the_caller_queued_after_it() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()

    async def take() -> str:
        return await first

    taking = started(take())
    # The "batch" answers in the order queued: the started call's reply first.
    loop.call_soon(first.set_result, "slot")
    loop.call_soon(second.set_result, "reserve")
    assert await second == "reserve"
    assert taking.done() and taking.result() == "slot"  # ready: no further turn needed

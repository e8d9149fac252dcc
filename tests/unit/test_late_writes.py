"""Late writes: retried until they land, one probe at a time while the store is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from broker.background import BackgroundTasks
from broker.late_writes import LateWrites, finish_quietly, finish_soon


class StoreDown(Exception):
    """What the fake store raises while it is down."""


class FakeStore:
    """A store that can be taken down; it counts every attempt and keeps what landed."""

    def __init__(self) -> None:
        self.down = False
        self.attempts = 0
        self.landed: list[str] = []
        self.changed = asyncio.Event()

    async def write(self, value: str) -> None:
        self.attempts += 1
        if self.down:
            raise StoreDown
        self.landed.append(value)
        self.changed.set()

    def writer(self, value: str) -> object:
        async def attempt() -> None:
            await self.write(value)

        return attempt


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (the writes land on a background loop) for at most two seconds."""
    async with asyncio.timeout(2.0):
        while not condition():  # noqa: ASYNC110 - the loop under test has no event to wait on
            await asyncio.sleep(0.005)


async def test_writes_land_once_the_store_answers_and_the_store_is_probed_once_per_interval() -> (
    None
):
    store = FakeStore()
    store.down = True
    late = LateWrites((StoreDown,), interval_s=0.01)
    for i in range(50):
        late.add(store.writer(f"w{i}"), until=float("inf"), what=f"w{i}")  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    # About ten intervals passed: about ten probes, not 50 writes x 10 attempts.
    assert 3 <= store.attempts <= 15, store.attempts
    assert late.pending == 50
    store.down = False
    await until(lambda: late.pending == 0)
    assert sorted(store.landed) == sorted(f"w{i}" for i in range(50))


async def test_a_write_past_its_deadline_is_given_up_and_reported() -> None:
    store = FakeStore()
    store.down = True
    now = [100.0]
    late = LateWrites((StoreDown,), interval_s=0.01, clock=lambda: now[0])
    gave_up: list[str] = []
    late.add(store.writer("old"), until=101.0, what="old", given_up=lambda: gave_up.append("old"))  # type: ignore[arg-type]
    late.add(store.writer("new"), until=200.0, what="new")  # type: ignore[arg-type]
    now[0] = 150.0
    await until(lambda: gave_up == ["old"])
    store.down = False
    await until(lambda: late.pending == 0)
    assert store.landed == ["new"]


async def test_a_write_that_fails_otherwise_is_dropped_and_does_not_block_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()

    async def broken() -> None:
        raise ValueError("not a store outage")

    late = LateWrites((StoreDown,), interval_s=0.01)
    store.down = True
    late.add(broken, until=float("inf"), what="broken")
    late.add(store.writer("ok"), until=float("inf"), what="ok")  # type: ignore[arg-type]
    store.down = False
    with caplog.at_level(logging.ERROR, "a2a_broker.late_writes"):
        await until(lambda: late.pending == 0)
    assert store.landed == ["ok"]
    assert any("broken" in r.getMessage() for r in caplog.records)


async def test_a_full_queue_gives_up_its_oldest_write() -> None:
    store = FakeStore()
    store.down = True
    gave_up: list[int] = []
    late = LateWrites((StoreDown,), interval_s=10, max_pending=3)
    for i in range(5):
        late.add(
            store.writer(str(i)),
            until=float("inf"),
            what=str(i),
            given_up=lambda i=i: gave_up.append(i),
        )  # type: ignore[arg-type, misc]
    assert gave_up == [0, 1] and late.pending == 3
    store.down = False
    await late.close(timeout_s=1)
    assert store.landed == ["2", "3", "4"]


async def test_close_tries_once_more_then_gives_up_what_cannot_land() -> None:
    store = FakeStore()
    store.down = True
    gave_up: list[str] = []
    late = LateWrites((StoreDown,), interval_s=10)
    late.add(store.writer("x"), until=float("inf"), what="x", given_up=lambda: gave_up.append("x"))  # type: ignore[arg-type]
    await late.close(timeout_s=0.1)
    assert gave_up == ["x"] and late.pending == 0 and store.landed == []


async def test_finish_quietly_never_raises_and_outlives_a_cancelled_caller() -> None:
    store = FakeStore()
    started = asyncio.Event()

    async def slow_write() -> None:
        started.set()
        await asyncio.sleep(0.05)
        await store.write("done")

    async def caller() -> None:
        await finish_quietly(slow_write(), "write", logging.getLogger("test"))

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(store.changed.wait(), 1)
    assert store.landed == ["done"]

    async def failing() -> None:
        raise StoreDown

    await finish_quietly(failing(), "write", logging.getLogger("test"))  # logged, not raised


async def test_what_a_caller_leaves_behind_runs_in_the_owner_and_ends_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks()
    started, ended = asyncio.Event(), asyncio.Event()

    async def never_done() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            ended.set()

    caller = asyncio.create_task(
        finish_quietly(never_done(), "write", logging.getLogger("t"), tasks)
    )
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert len(tasks) == 1  # it outlived its caller, in the owner
    finish_soon(never_done(), "another", logging.getLogger("t"), tasks)
    await tasks.close()  # the shutdown ends both
    assert ended.is_set() and len(tasks) == 0
    with caplog.at_level(logging.WARNING, logger="t"):
        finish_soon(never_done(), "too late", logging.getLogger("t"), tasks)
        await finish_quietly(never_done(), "too late", logging.getLogger("t"), tasks)
    assert caplog.messages == ["too late not run: the broker is shutting down"] * 2

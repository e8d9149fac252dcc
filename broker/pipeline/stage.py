"""The stage contract every pipeline is built from, and the few mechanisms stages share.

A stage is an async callable ``(ctx, call_next) -> Outcome`` over a context that extends
``broker.types.CallContext``. It may

* pass on: ``return await call_next(ctx)``, having learnt something into ``ctx``;
* refuse: raise a ``BrokerError`` (the error boundary, outermost, answers it in the protocol's
  shape and the audit records it);
* answer itself: return an ``Outcome`` without calling ``call_next`` (the innermost stage,
  which forwards, always does);
* hold something for the rest of the call (a reservation, a slot, a place in a bulkhead) and
  give it back when the call ends: use ``holding``, never a hand-written try/finally, so that
  a refusal, a failure, a cancellation and the end of a stream all give it back the same way.

Stages keep no per-call state; they are built once at start-up and folded once (``fold``). A
new protocol (MCP) brings a context class, a parse stage and a forward stage, and reuses the
shared stages in the middle; a new check (approval, data controls) is one stage placed, with
the reason for its place, in each pipeline's order (``broker.pipeline.a2a``, ``.llm``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from typing import Any, Generic, Protocol, TypeVar

from broker.background import BackgroundTasks
from broker.late_writes import finish_quietly, finish_soon
from broker.types import Outcome, StreamReply

Ctx = TypeVar("Ctx")
_T = TypeVar("_T")
CallNextOf = Callable[[Ctx], Awaitable[Outcome]]
StageOf = Callable[[Ctx, Callable[[Ctx], Awaitable[Outcome]]], Awaitable[Outcome]]
Finish = Callable[[], Awaitable[None]]
log = logging.getLogger("a2a_broker.pipeline")


def fold(
    stages: Sequence[Callable[[Ctx, Callable[[Ctx], Awaitable[Outcome]]], Awaitable[Outcome]]],
) -> Callable[[Ctx], Awaitable[Outcome]]:
    """Compose stages so each receives the rest as ``call_next``; the last must answer itself.

    A stage whose ``passes_through`` is true (it would only ``return await call_next(ctx)``
    under the settings it was built with) is left out: one coroutine frame fewer to create per
    call and to resume through at every suspension of the call (decision 0087). The stage
    lists (``broker.pipeline.a2a``, ``.llm``) still name it, in its place.
    """

    async def end(ctx: Ctx) -> Outcome:
        raise RuntimeError("the last stage of a pipeline must not call call_next")

    handler: Callable[[Ctx], Awaitable[Outcome]] = end
    for stage in reversed(stages):
        if getattr(stage, "passes_through", False) is not True:
            handler = _bind(stage, handler)
    return handler


def _bind(
    stage: Callable[[Ctx, Callable[[Ctx], Awaitable[Outcome]]], Awaitable[Outcome]],
    call_next: Callable[[Ctx], Awaitable[Outcome]],
) -> Callable[[Ctx], Awaitable[Outcome]]:
    return _Bound[Ctx](stage, call_next)


class _Bound(Generic[Ctx]):
    """A stage with the rest of the chain bound: calling it returns the stage's own coroutine.

    Not an ``async def`` wrapper: that would add a coroutine frame per stage, which every
    suspension of the request (each store round trip, the upstream's answer) resumes through.
    """

    __slots__ = ("_call_next", "_stage")

    def __init__(
        self,
        stage: Callable[[Ctx, Callable[[Ctx], Awaitable[Outcome]]], Awaitable[Outcome]],
        call_next: Callable[[Ctx], Awaitable[Outcome]],
    ) -> None:
        self._stage = stage
        self._call_next = call_next

    def __call__(self, ctx: Ctx) -> Awaitable[Outcome]:
        return self._stage(ctx, self._call_next)


def after_reply(callback: Callable[..., object], *args: object) -> None:
    """Run ``callback(*args)`` in the loop pass after the request's task yields, which for a
    unary answer is once the edge has written it (decision 0106). For work the answer does not
    wait for (the outcome record, the access log line): at c=1 it then runs while the answer
    travels to the caller instead of before. ``callback`` must not raise (an exception goes to
    the loop's exception handler)."""
    asyncio.get_running_loop().call_soon(callback, *args)


def started(coro: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
    """Run ``coro`` up to its first suspension now, and on as what it waits for completes: a
    task started eagerly (``asyncio.eager_task_factory`` on Python 3.12). A store call made so
    is queued in the running turn, ahead of what the caller queues next, so the two share a
    round trip and the caller finds its result ready, not a loop turn later (decision 0075).
    Its outcome is the returned future's; keep it and await it (or its failure goes unseen).
    """
    outcome: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
    _Eager(coro, outcome).step()
    return outcome


class _Eager(Generic[_T]):
    """The driver of one ``started`` coroutine. An object, not a closure that names itself: a
    function whose cell holds it is a reference cycle, which would leave the coroutine and its
    future (and what they hold) to the cyclic GC on every call instead of freeing them at once.
    """

    __slots__ = ("_coro", "_outcome")

    def __init__(self, coro: Coroutine[Any, Any, _T], outcome: asyncio.Future[_T]) -> None:
        self._coro = coro
        self._outcome = outcome

    def step(self, _: object = None) -> None:
        outcome = self._outcome
        try:
            waited = self._coro.send(None)
        except StopIteration as done:
            outcome.set_result(done.value)
        except asyncio.CancelledError:
            outcome.cancel()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the future carries it, as a task would
            outcome.set_exception(exc)
        else:
            if waited is None:  # a bare yield (sleep(0)): on at the next turn
                outcome.get_loop().call_soon(self.step)
            else:  # an asyncio future, as a task waits for one
                waited._asyncio_future_blocking = False
                waited.add_done_callback(self.step)


class Held(Protocol):
    """Something a stage holds for the rest of a call (``holding``)."""

    async def give_back(self) -> None:
        """The call failed, was refused further in, or was cancelled: nothing to settle."""

    async def settle(self) -> None:
        """The answer is complete (a unary answer, or the end of a stream however it ended)."""


async def holding(
    ctx: Ctx,
    call_next: Callable[[Ctx], Awaitable[Outcome]],
    held: Held,
    what: str,
    *,
    dropped: Callable[[], None] | None = None,
    tasks: BackgroundTasks | None = None,
) -> Outcome:
    """Run the rest of the chain while ``held`` is held, and let go of it exactly once.

    A refusal, failure or cancellation before an answer gives it back; a unary answer
    settles it in place (the caller is waiting for that answer anyway, and a task per call
    would cost ~20 µs of hot path), so ``settle`` must not raise; a stream settles when it
    ends, however it ends (completed, failed, or the caller hung up). Giving back and a
    stream's settle run to their end even when the call is cancelled meanwhile and never
    raise (``finish_quietly``): a failure is logged, and the stores' expiry or retries
    recover it. A stream dropped without ever being iterated never ends: it settles when
    it is collected instead (``dropped``, synchronous, runs then too, for holdings that
    cannot wait for a task). What outlives the call runs in ``tasks`` (the runtime's).
    """
    try:
        outcome = await call_next(ctx)
    except BaseException:
        await finish_quietly(held.give_back(), f"{what} give-back", log, tasks)
        raise
    if isinstance(outcome, StreamReply):
        once = _SettleOnce(held, what, dropped, tasks)
        events = stream_end(outcome.events, once.settle, dropped=once.dropped)
        return StreamReply(events, outcome.status, outcome.headers)
    await held.settle()
    return outcome


class _SettleOnce:
    """A stream's holding, settled once: when the stream ends, or when it is collected."""

    def __init__(
        self,
        held: Held,
        what: str,
        dropped: Callable[[], None] | None,
        tasks: BackgroundTasks | None,
    ) -> None:
        self._held: Held | None = held
        self._what = what
        self._dropped = dropped
        self._tasks = tasks

    async def settle(self) -> None:
        if (held := self._take()) is not None:
            await finish_quietly(held.settle(), f"{self._what} settle", log, self._tasks)

    def dropped(self) -> None:
        if (held := self._take()) is not None:
            finish_soon(held.settle(), f"{self._what} settle", log, self._tasks)

    def _take(self) -> Held | None:
        held, self._held = self._held, None
        if held is not None and self._dropped is not None:
            self._dropped()
        return held


def stream_end(
    events: AsyncIterator[bytes],
    finish: Finish,
    *,
    observe: Callable[[bytes], None] | None = None,
    dropped: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """Relay ``events`` unchanged (each shown to ``observe``); when they end, however they
    end, close them at once (and so the upstream) and run ``finish``. A stream that is never
    iterated never ends: ``dropped`` then runs when it is collected."""
    relayed = _finished(events, finish, observe)
    if dropped is not None:
        weakref.finalize(relayed, dropped)
    return relayed


async def _finished(
    events: AsyncIterator[bytes], finish: Finish, observe: Callable[[bytes], None] | None
) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            if observe is not None:
                observe(event)
            yield event
    finally:
        try:
            await close_events(events)
        finally:
            await finish()


async def close_events(events: AsyncIterator[bytes]) -> None:
    """Close a stream's generator now (and so its upstream), not when it is collected."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()

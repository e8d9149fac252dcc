"""The first refusal stops the chain, and everything held before it is given back, once.

Chains of generated stages (pass on, hold something with ``holding``, refuse) end in a unary
or a streamed answer, which the caller reads to the end, abandons part-way, or which fails
part-way. Whatever happens, every holding is let go of exactly once: given back when the call
was refused or failed before an answer, settled once the answer (or the stream) ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import BrokerError, PolicyDeniedError, UpstreamBadResponseError
from broker.pipeline.stage import fold, holding
from broker.types import CallContext, Outcome, Reply, StreamReply

CallNext = Callable[[CallContext], Awaitable[Outcome]]


async def _body() -> bytes:
    return b""


@dataclass
class Ledger:
    ran: list[int] = field(default_factory=list)
    given_back: list[int] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)


class _Held:
    def __init__(self, ledger: Ledger, index: int) -> None:
        self._ledger, self._index = ledger, index

    async def give_back(self) -> None:
        await asyncio.sleep(0)  # a store round trip
        self._ledger.given_back.append(self._index)

    async def settle(self) -> None:
        await asyncio.sleep(0)
        self._ledger.settled.append(self._index)


Stage = Callable[[CallContext, CallNext], Awaitable[Outcome]]


def _stage(kind: str, index: int, ledger: Ledger) -> Stage:
    async def stage(ctx: CallContext, call_next: CallNext) -> Outcome:
        ledger.ran.append(index)
        if kind == "refuse":
            raise PolicyDeniedError
        if kind == "hold":
            return await holding(ctx, call_next, _Held(ledger, index), f"thing {index}")
        return await call_next(ctx)

    return stage


def _answer(kind: str, events: int, fail_at: int | None) -> CallNext:
    async def stream() -> AsyncIterator[bytes]:
        for n in range(events):
            if n == fail_at:
                raise UpstreamBadResponseError
            yield b"data: %d\n\n" % n

    async def answer(_: CallContext) -> Outcome:
        if kind == "fails":
            raise UpstreamBadResponseError
        if kind == "unary":
            return Reply(200, b"{}")
        return StreamReply(stream())

    return answer


async def _run(
    kinds: list[str], answer: str, events: int, fail_at: int | None, read: int
) -> tuple[Ledger, BaseException | None]:
    ledger = Ledger()
    stages = [_stage(kind, i, ledger) for i, kind in enumerate(kinds)]
    terminal = _answer(answer, events, fail_at)

    async def end(ctx: CallContext, _: CallNext) -> Outcome:
        return await terminal(ctx)

    handler = fold([*stages, end])
    try:
        outcome = await handler(CallContext(headers={}, read_body=_body))
    except BrokerError as err:
        return ledger, err
    if isinstance(outcome, StreamReply):
        events_iter = outcome.events
        assert isinstance(events_iter, AsyncIterator)
        try:
            for _ in range(read):  # the caller reads ``read`` events, then hangs up
                await anext(events_iter)
        except (StopAsyncIteration, BrokerError):
            pass
        await events_iter.aclose()  # type: ignore[attr-defined]
        # A stream never iterated never ends; the server drops it, and it settles then.
        del outcome, events_iter
    await asyncio.sleep(0.01)  # shielded settles finish in their own task
    return ledger, None


@given(
    kinds=st.lists(st.sampled_from(["pass", "hold", "refuse"]), max_size=8),
    answer=st.sampled_from(["unary", "stream", "fails"]),
    events=st.integers(0, 4),
    fail_at=st.none() | st.integers(0, 4),
    read=st.integers(0, 5),
)
def test_the_first_refusal_stops_the_chain_and_every_holding_ends_once(
    kinds: list[str], answer: str, events: int, fail_at: int | None, read: int
) -> None:
    ledger, error = asyncio.run(_run(kinds, answer, events, fail_at, read))
    first_refusal = kinds.index("refuse") if "refuse" in kinds else None
    reached = kinds[: first_refusal + 1] if first_refusal is not None else kinds
    held = [i for i, kind in enumerate(reached) if kind == "hold"]

    assert ledger.ran == list(range(len(reached)))  # nothing after the first refusal ran
    if first_refusal is not None:
        assert isinstance(error, PolicyDeniedError)
    let_go = sorted(ledger.given_back + ledger.settled)
    assert let_go == held  # each holding let go of exactly once
    if first_refusal is not None or answer == "fails":
        assert ledger.settled == [] and sorted(ledger.given_back) == held
    else:
        assert ledger.given_back == [] and sorted(ledger.settled) == held

"""The data controls as two stages, written once for every protocol (docs/datacontrols.md).

``ScanRequest`` stands before the hop's token is minted and before any budget moves: it checks
the flow rules against the tags the work arrives with, scans what the caller sends (redacting,
pseudonymising or refusing by policy), checks the flow rules again with what it found, and
leaves the work's tags in ``ctx.data_tags`` for the token. ``ScanAnswer`` stands inside the
audit, next to the forward: it scans the answer (unary, or a stream event by event across
chunk boundaries) before it goes back, and restores the call's pseudonyms, so the audit's
outcome record covers what the caller got and what was found in it.

What a protocol's payloads look like, and how they are rewritten, is its ``DataView``. What
was found is kept by type, count and action (``ctx.data_found``), counted in the metrics and
written to the audit: never a value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

from broker.datacontrols import (
    DataControls,
    Inspection,
    Placeholders,
    Subject,
    TextStream,
    payloads,
)
from broker.datacontrols.controls import Walk
from broker.datacontrols.tags import accumulate
from broker.errors import BrokerError
from broker.observability.record import observe_detections
from broker.pipeline.stage import close_events
from broker.types import CallContext, Outcome, Reply, StreamReply

C = TypeVar("C", bound=CallContext)
C_contra = TypeVar("C_contra", bound=CallContext, contravariant=True)
Direction = Literal["request", "response"]


class Scan:
    """The controls bound to one call and one direction: each method scans and acts on a
    payload, records what was found into the context, and returns the payload to send on
    (the same object when nothing changed)."""

    def __init__(self, controls: DataControls, ctx: CallContext, subject: Subject) -> None:
        self.controls = controls
        self._ctx = ctx
        self._subject = subject
        self._placeholders = ctx.placeholders

    def a2a(self, payload: Any) -> Any:
        return self._inspect(payload, payloads.map_a2a)

    def chat_request(self, payload: Any) -> Any:
        return self._inspect(payload, payloads.map_chat_request)

    def chat_response(self, payload: Any) -> Any:
        return self._inspect(payload, payloads.map_chat_response)

    def json(self, payload: Any) -> Any:
        return self._inspect(payload, payloads.map_json)

    def text(self, text: str) -> str:
        return str(self._inspect(text, _whole))

    def stream(self) -> TextStream:
        """One streamed text; hand it to ``finished`` when it ends (or fails)."""
        return self.controls.text_stream(self._subject, self._placeholders)

    def finished(self, stream: TextStream) -> None:
        record(self._ctx, self._subject.direction, stream.inspection)

    def _inspect(self, payload: Any, walk: Walk) -> Any:
        # What was found is recorded before a blocked type refuses the payload.
        seen = self.controls.inspect(
            payload, self._subject, self._placeholders, walk, seen=self._record
        )
        return seen.payload

    def _record(self, inspection: Inspection) -> None:
        record(self._ctx, self._subject.direction, inspection)


def _whole(text: Any, fn: Callable[[str], str]) -> Any:
    return fn(text)


def record(ctx: CallContext, direction: str, inspection: Inspection) -> None:
    """Add what one inspection found to the call's tally (audit) and the metrics."""
    if not inspection.found:
        return
    observe_detections(direction, inspection.found, inspection.actions)
    if ctx.data_found is None:
        ctx.data_found = {}
    tally = ctx.data_found.setdefault(direction, {})
    for kind, count in inspection.found.items():
        before = tally.get(kind, (0, ""))[0]
        tally[kind] = (before + count, inspection.actions[kind])


def tagged(ctx: CallContext, direction: Direction = "request") -> tuple[str, ...]:
    """The types found in ``direction`` whose values went on (action ``tag``)."""
    found = (ctx.data_found or {}).get(direction, {})
    return tuple(sorted(kind for kind, (_, action) in found.items() if action == "tag"))


class DataView(Protocol[C_contra]):
    """How one protocol's calls look to the data controls."""

    def subject(self, ctx: C_contra, direction: Direction) -> Subject:
        """The call's coordinates that the data rules match."""

    def target(self, ctx: C_contra) -> tuple[str, str]:
        """(agent, model) the flow rules judge: one of them is ""."""

    def scan_request(self, ctx: C_contra, scan: Scan) -> None:
        """Scan what the caller sends and put what is to be forwarded in its place."""

    def scan_reply(self, ctx: C_contra, reply: Reply, scan: Scan) -> Reply:
        """The unary answer to relay, scanned."""

    def stream_scanner(self, ctx: C_contra, scan: Scan) -> EventScanner:
        """A scanner for the events of a streamed answer."""

    def error_event(self, ctx: C_contra, err: BrokerError) -> bytes:
        """The protocol's event that ends a stream with ``err``."""


class EventScanner(Protocol):
    """Scans a stream's events in order; may hold text back (and so emit fewer or more events
    than it is fed), never a whole stream."""

    def feed(self, event: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...

    def abandon(self) -> None:
        """The stream failed: record what the held texts found, send nothing more."""


class ScanRequest(Generic[C]):
    """Flow rules on the tags the work carries, then the request's data, then the flow rules
    on the tags it now carries. Refusals: DATA_FLOW_DENIED, DATA_BLOCKED, DATA_SCAN_LIMIT,
    DATA_CONTROLS_UNAVAILABLE (docs/errors.md)."""

    def __init__(self, controls: DataControls, view: DataView[C]) -> None:
        self._controls = controls
        self._view = view

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[Outcome]]) -> Outcome:
        agent, model = self._view.target(ctx)
        carried = ctx.parent.tags if ctx.parent is not None else ()
        # A flow already forbidden by what the work carries is refused before anything is read.
        self._controls.check_flow(carried, agent=agent, model=model)
        ctx.placeholders = Placeholders()  # the call's pseudonyms: in memory, for this call only
        scan = Scan(self._controls, ctx, self._view.subject(ctx, "request"))
        self._view.scan_request(ctx, scan)
        ctx.data_tags = accumulate(carried, tagged(ctx))
        if len(ctx.data_tags) > len(carried):
            self._controls.check_flow(ctx.data_tags, agent=agent, model=model)
        return await call_next(ctx)


class ScanAnswer(Generic[C]):
    """The answer's data, unary or streamed, with the call's pseudonyms restored. Refusals:
    DATA_RESPONSE_BLOCKED (a stream ends with it as its error event), DATA_SCAN_LIMIT."""

    def __init__(self, controls: DataControls, view: DataView[C]) -> None:
        self._controls = controls
        self._view = view

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[Outcome]]) -> Outcome:
        outcome = await call_next(ctx)
        scan = Scan(self._controls, ctx, self._view.subject(ctx, "response"))
        if isinstance(outcome, Reply):
            return self._view.scan_reply(ctx, outcome, scan)
        scanner = self._view.stream_scanner(ctx, scan)
        events = _scanned(ctx, outcome.events, scanner, self._view)
        return StreamReply(events, outcome.status, outcome.headers)


async def _scanned(
    ctx: C, events: AsyncIterator[bytes], scanner: EventScanner, view: DataView[C]
) -> AsyncIterator[bytes]:
    """The stream's events as the scanner lets them out. A refusal mid-stream (a blocked type,
    the scan limit) ends it with the protocol's error event, before any of the value leaves."""
    try:
        try:
            async for event in events:
                for out in scanner.feed(event):
                    yield out
            for out in scanner.finish():
                yield out
        except BrokerError as err:
            scanner.abandon()
            ctx.error = err
            yield view.error_event(ctx, err)
    finally:
        await close_events(events)

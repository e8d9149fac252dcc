"""Server-sent events relayed event by event: split, inspected cheaply, never buffered whole.

``SseParser`` is the one reader of event streams: the A2A and LLM relays below pass each
event's bytes on, the MCP relay (``broker.mcp.events``) reads its id, name and data.

The relay sends for each upstream event what ``on_event`` makes of it (the A2A edge re-frames
every event, ``broker.protocols.a2a.answers``; the LLM edge relays them as they came). A
separate task reads the upstream so the sender can emit heartbeats while the upstream is quiet
and enforce the maximum duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from broker.errors import BrokerError, StreamMaxDurationError, UpstreamResponseTooLargeError

HEARTBEAT = b": ping\r\n\r\n"


class SseEvent(msgspec.Struct, frozen=True):
    """One event as the WHATWG event-stream rules read it, with the bytes it came in.

    ``raw``: the event's lines exactly as sent, with its terminating blank line (what the A2A
    and LLM relays inspect and pass on); ``data``: its ``data:`` lines joined with newlines
    (None: the event has none, a comment or an id-only priming); ``event_id`` and ``event``:
    its ``id:`` and ``event:`` fields (MCP relays them; resumption needs the id).
    """

    raw: bytes
    data: bytes | None = None
    event_id: bytes = b""
    event: bytes = b""


def _too_large() -> BrokerError:
    return UpstreamResponseTooLargeError("An event in the agent's stream is too large.")


class SseParser:
    """Cuts a byte stream into SSE events, whatever the chunking: lines end with CRLF, LF or
    CR, an event ends with a blank line. The one parser of every relay (A2A, LLM, MCP).

    ``too_large`` makes the error raised when an unfinished event passes ``max_event_bytes``.
    """

    def __init__(
        self, max_event_bytes: int, too_large: Callable[[], BrokerError] = _too_large
    ) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes
        self._too_large = too_large
        self._lines: list[bytes] = []
        self._raw = bytearray()

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buf += chunk
        events: list[SseEvent] = []
        while (cut := self._next_line()) is not None:
            line, ending = cut
            self._raw += line + ending
            if line:
                self._lines.append(line)
                continue
            if self._lines:
                events.append(_event(self._lines, bytes(self._raw)))
                self._lines = []
            self._raw.clear()
        if len(self._buf) + len(self._raw) > self._max:
            raise self._too_large()
        return events

    def rest(self) -> bytes:
        """Bytes left after the stream ended: an unterminated last event, if any."""
        return bytes(self._raw + self._buf).strip()

    def _next_line(self) -> tuple[bytes, bytes] | None:
        lf, cr = self._buf.find(b"\n"), self._buf.find(b"\r")
        i = lf if cr < 0 or 0 <= lf < cr else cr
        if i < 0:
            return None
        cut = i + 1
        if self._buf[i] == 13:
            if i + 1 == len(self._buf):
                return None  # a CR at the end: wait to see whether LF follows
            cut += self._buf[i + 1] == 10
        line, ending = bytes(self._buf[:i]), bytes(self._buf[i:cut])
        del self._buf[:cut]
        return line, ending


def _event(lines: list[bytes], raw: bytes) -> SseEvent:
    data: list[bytes] = []
    event_id = event = b""
    for line in lines:
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            data.append(value)
        elif name == b"id" and b"\x00" not in value:
            event_id = value
        elif name == b"event":
            event = value
    return SseEvent(raw, b"\n".join(data) if data else None, event_id, event)


def event_data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event (the JSON payload for A2A streams)."""
    lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    parts = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
    return b"\n".join(parts)


_END = object()


async def relay(
    chunks: AsyncIterator[bytes],
    *,
    max_event_bytes: int,
    heartbeat_s: float,
    max_duration_s: float,
    on_event: Callable[[bytes], Awaitable[bytes | None]],
    error_event: Callable[[BrokerError], bytes],
    close_upstream: Callable[[], None],
    recheck: Callable[[], Awaitable[None]] | None = None,
    recheck_s: float = 1.0,
) -> AsyncIterator[bytes]:
    """Yield the upstream's events as they arrive, heartbeats while it is quiet.

    ``on_event`` turns each event into the bytes sent for it (None: nothing is sent), and
    ``recheck`` runs every ``recheck_s`` (is the stream still allowed?); either may raise a
    BrokerError to end the stream. Errors end it with an ``event: error`` frame. However the
    consumer stops (end, error, client disconnect = cancellation), the upstream is closed.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
    reader = asyncio.create_task(_read_events(chunks, max_event_bytes, queue))
    now = time.monotonic()
    deadline, next_check, next_beat = now + max_duration_s, now + recheck_s, now + heartbeat_s
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                yield error_event(StreamMaxDurationError())
                return
            if recheck is not None and now >= next_check:
                try:
                    await recheck()
                except BrokerError as err:
                    yield error_event(err)
                    return
                next_check = now + recheck_s
            if now >= next_beat:
                yield HEARTBEAT
                next_beat = now + heartbeat_s
            wake = min(deadline, next_beat, next_check if recheck is not None else deadline)
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    item = await queue.get()
            except TimeoutError:
                continue
            next_beat = time.monotonic() + heartbeat_s
            if item is _END:
                return
            if isinstance(item, BrokerError):
                yield error_event(item)
                return
            assert isinstance(item, bytes)  # noqa: S101 - the queue holds events, errors or _END
            try:
                frame = await on_event(item)
            except BrokerError as err:
                yield error_event(err)
                return
            if frame is not None:
                yield frame
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, BrokerError):
            await reader
        close_upstream()


async def _read_events(
    chunks: AsyncIterator[bytes], max_event_bytes: int, queue: asyncio.Queue[object]
) -> None:
    parser = SseParser(max_event_bytes)
    try:
        async for chunk in chunks:
            for event in parser.feed(chunk):
                await queue.put(event.raw)
        tail = parser.rest()
        if tail:
            await queue.put(tail + b"\r\n\r\n")
        await queue.put(_END)
    except BrokerError as err:
        await queue.put(err)

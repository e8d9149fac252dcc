"""Server-sent events relayed event by event: split, inspected cheaply, never buffered whole.

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

from broker.errors import BrokerError, StreamMaxDurationError, UpstreamResponseTooLargeError

_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
HEARTBEAT = b": ping\r\n\r\n"


class EventSplitter:
    """Cuts a byte stream into complete SSE events (each with its terminating blank line)."""

    def __init__(self, max_event_bytes: int) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        events: list[bytes] = []
        while (cut := self._next_cut()) > 0:
            events.append(bytes(self._buf[:cut]))
            del self._buf[:cut]
        if len(self._buf) > self._max:
            raise UpstreamResponseTooLargeError("An event in the agent's stream is too large.")
        return events

    def rest(self) -> bytes:
        """Bytes left after the stream ended: an unterminated last event, if any."""
        return bytes(self._buf).strip()

    def _next_cut(self) -> int:
        ends = [i + len(sep) for sep in _SEPARATORS if (i := self._buf.find(sep)) >= 0]
        return min(ends) if ends else -1


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
    splitter = EventSplitter(max_event_bytes)
    try:
        async for chunk in chunks:
            for event in splitter.feed(chunk):
                await queue.put(event)
        tail = splitter.rest()
        if tail:
            await queue.put(tail + b"\r\n\r\n")
        await queue.put(_END)
    except BrokerError as err:
        await queue.put(err)

"""A response's head and a unary body leave in one write.

uvicorn's response cycle writes the status line and headers when the application sends
``http.response.start``, and the body when it sends ``http.response.body``: two system calls
and two TCP segments for every unary answer, with the peer woken for each. ``HeadWithBody`` is
the transport as one cycle sees it: the cycle's first write is held until its next one, or
until the end of the loop turn at the latest (a stream's headers, a ``100 Continue``, go out as
soon as before, only after the callbacks already ready to run). Decision 0077.

A unary answer the mediation edge builds itself need not go through ``send`` at all:
``send_whole`` writes what the two messages would have written, byte for byte, with
the cycle's state left as they leave it, without the two message dicts, a regular-expression
search per header name and value, and the end-of-turn flush (decision 0098).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

# A body up to this size is copied behind the head (cheaper than a vectored write); a larger
# one is handed to the transport beside it, uncopied.
_JOIN_BELOW = 64 * 1024


class HeadWithBody:
    """One response cycle's view of the connection's transport (``write``, ``is_closing``
    and ``close``, all a cycle uses). Bytes are written in the order they were given."""

    __slots__ = ("_held", "_hold", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._hold = True  # the cycle's first write: its head
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._hold:
            self._hold = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is None:
            self._transport.write(data)
            return
        self._held = None
        if len(data) < _JOIN_BELOW:
            self._transport.write(held + data)
        else:
            self._transport.writelines((held, data))

    def flush(self) -> None:
        """Write what is held now (the end of the loop turn it was given in)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_whole(self, data: bytes) -> None:
        """The cycle's whole answer, head and body: written now, behind anything held."""
        self._hold = False
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()


# Names whose value changes how uvicorn frames or ends an answer: an answer carrying one takes
# ``send`` (its content-length is the one ``send_whole`` adds).
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
Headers = list[tuple[bytes, bytes]]


def send_whole(cycle: RequestResponseCycle, status: int, headers: Headers, body: bytes) -> bool:
    """Send ``status``, ``headers`` (lower-case names), a ``content-length`` and ``body`` on
    ``cycle`` as its ``send`` sends ``http.response.start`` and one ``http.response.body`` with
    them: the same bytes (in one write), the same state after, the same close. False, and
    nothing done, when the answer is one ``send`` must handle: a response already started, a
    client gone or a transport paused, the access log on, ``HEAD``, a status uvicorn has no line
    for, a framing header, a name or value ``send`` would refuse or change, or a body large
    enough to be written uncopied beside its head. ``cycle.transport`` is a ``HeadWithBody``."""
    line = STATUS_LINE.get(status)
    if (
        line is None
        or cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.access_log
        or cycle.scope["method"] == "HEAD"
        or len(body) >= _JOIN_BELOW
    ):
        return False
    head = _head(cycle.default_headers, headers)
    if head is None:
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = False
    cycle.response_complete = True
    close = b"" if cycle.keep_alive else b"connection: close\r\n"
    transport: HeadWithBody = cycle.transport  # type: ignore[assignment]
    transport.write_whole(
        b"%s%scontent-length: %d\r\n%s\r\n%s" % (line, head, len(body), close, body)
    )
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
    return True


def _head(defaults: Headers, headers: Headers) -> bytes | None:
    """The header lines of ``defaults`` and ``headers``; None if ``send`` would refuse a name or
    value, lower-case a name, or frame the answer by one of them."""
    pairs = defaults + headers
    if not pairs:
        return b""
    names, values = zip(*pairs, strict=True)
    joined = b"".join(names)
    # uvicorn's two expressions are character classes: one search over the names (the values)
    # joined finds what a search of each name (each value) finds.
    if (
        HEADER_RE.search(joined)
        or joined.lower() != joined
        or HEADER_VALUE_RE.search(b"".join(values))
        or not _FRAMING.isdisjoint(names)
    ):
        return None
    return b"\r\n".join(map(b": ".join, pairs)) + b"\r\n"


def sent_whole(send: Callable[[Any], Any], status: int, headers: Headers, body: bytes) -> bool:
    """Whether a unary answer went out whole (``send_whole``): ``send`` is the own ``send`` of a
    uvicorn cycle whose transport is a ``HeadWithBody`` (``BoundedHttpToolsProtocol``'s), and
    the answer needs nothing of ``send``. False: nothing was sent, send it as two messages."""
    cycle: Any = getattr(send, "__self__", None)
    return (
        type(cycle) is RequestResponseCycle
        and isinstance(cycle.transport, HeadWithBody)
        and send_whole(cycle, status, headers, body)
    )

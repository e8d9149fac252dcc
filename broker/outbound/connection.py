"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio Protocol and httptools' parser.

The connection carries one exchange at a time (no pipelining): ``start`` writes a request,
``headers`` waits for the answer's status line and headers, ``next_chunk`` hands out the body as
it arrives. Failures are the low-level exceptions ``broker.outbound.errors.transport_error``
reads: ``UpstreamClosedError`` (the upstream closed or reset before an answer), a truncated or
unparsable answer (``MalformedResponseError``), ``TimeoutError`` from ``expire``. The pool
(``broker.outbound.http11``) owns connections; this module never raises a broker error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

from broker.outbound.errors import MalformedResponseError, UpstreamClosedError

_HIGH_WATER = 256 * 1024  # unread body bytes at which the socket stops being read
_NO_BODY = frozenset({204, 304})


class UpstreamConnection(asyncio.Protocol):
    """A pooled connection; ``reusable`` once an answer was read to its end and kept alive."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        # As lax as aiohttp's client parser (outside its dev mode), so an answer aiohttp read
        # is read here too: bare LF line ends, odd header bytes, spaces after a chunk size.
        self._parser.set_dangerous_leniencies(
            lenient_headers=True,
            lenient_optional_cr_before_lf=True,
            lenient_spaces_after_chunk_size=True,
        )
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self._raw: list[tuple[bytes, bytes]] = []
        self.headers: dict[str, str] = {}
        self._headers_done: asyncio.Future[None] = self._loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self._until_close = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._paused = False

    # --- what the pool and the response call ---------------------------------------------------

    def start(self, request: bytes) -> None:
        """Send one request; the connection must be idle."""
        self._reset()
        assert self._transport is not None  # noqa: S101 - a pooled connection is connected
        self._transport.write(request)

    async def headers_arrived(self) -> None:
        """Return once the answer's headers are in ``status`` and ``headers``."""
        await self._headers_done

    async def next_chunk(self) -> bytes:
        """The next piece of the body, ``b""`` at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _HIGH_WATER // 2:
            self._paused = False
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return self.complete and self._keep_alive and not self.closed and self._error is None

    def expire(self) -> None:
        """A deadline passed: fail whoever waits with TimeoutError and drop the connection."""
        self._fail(TimeoutError("upstream deadline"))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport). Idempotent: the
        # connector also calls it, as uvloop may call it only on its next turn.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self.complete:  # bytes nobody asked for: this connection is not used again
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._switched()
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponseError(f"unparsable answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended(exc)

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer behind the first: never read as the next one
            raise MalformedResponseError("an answer nobody asked for")  # ends feed_data

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # informational: the real answer follows
            self._raw = []
            return
        self.status = status
        headers = {k.decode("latin-1").lower(): v.decode("utf-8", "surrogateescape")
                   for k, v in self._raw}  # fmt: skip
        self.headers = headers
        self._until_close = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in _NO_BODY
        )
        self._keep_alive = self._parser.should_keep_alive()
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:  # not the end of an informational answer
            self.complete = True
            self._wake()

    # --- internals -------------------------------------------------------------------------------

    def _ended(self, exc: Exception | None = None) -> None:
        """The upstream closed its side: an answer read until close ends here; else a failure."""
        if self.complete:
            return
        if self.status and self._until_close:
            self.complete = True
            self._keep_alive = False
            self._wake()
        elif self.status:
            self._fail(MalformedResponseError("the answer ended before its body was complete"))
        else:  # before the end of the headers, as aiohttp's ServerDisconnectedError
            self._fail(UpstreamClosedError(exc))

    def _switched(self) -> None:
        """101 Switching Protocols: an answer without a body (as aiohttp reads it) on a
        connection that no longer speaks HTTP."""
        if self.status == 101:
            self.complete = True
            self._keep_alive = False
            self._wake()
        else:
            self._fail(MalformedResponseError("the upstream switched protocols"))
        self.close()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = exc
            if not self._headers_done.done():
                self._headers_done.set_exception(exc)
                self._headers_done.exception()  # retrieved: nobody may be waiting yet
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

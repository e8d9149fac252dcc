"""Bounded connection lives: header, body and idle timeouts, and a cap on open connections.

uvicorn (httptools) arms no timer until a first response is sent, so a socket that never sends
a request, or sends its headers a byte a second, stays open for ever, and under the open-file
limit such sockets starve every real client. ``BoundedHttpToolsProtocol`` is uvicorn's protocol
with these bounds added (decision 0024 says why uvicorn and not Granian):

- **header timeout**: a request's headers must be complete within ``header_timeout_s`` of the
  connection opening (or of the first byte of a later request on a kept-alive connection); the
  deadline is not reset by each byte, so a slow-loris client is cut off like a silent one.
  Answer: ``408 REQUEST_HEADER_TIMEOUT``, then the connection is closed.
- **body timeout**: the body must be complete within ``body_timeout_s`` after the headers;
  ``408 REQUEST_BODY_TIMEOUT`` (the application sees the client disconnect).
- **idle timeout**: a kept-alive connection is closed after ``idle_timeout_s`` without a request.
- **connection cap** (per worker): when ``max_connections`` are open, a new connection first
  closes the oldest *waiting* one (idle, or still without complete headers: no work is lost);
  when every open connection has a request in flight, the new one is refused at once with
  ``503 CONNECTION_LIMIT`` and ``Retry-After``, written before its request is read, after which
  the broker stops sending and drains what the client sends for a moment, so the client reads
  the refusal instead of a reset. A connection closed at once (a refusal while too many
  linger, a shed or timed-out one) first discards what it received and did not read, for the
  same reason (``close_drained``).

Nothing is silent: every second in which a connection was refused, shed or timed out gives one
warning line on the ``a2a_broker.connections`` logger with the counts, and is handed to the
observers (``observe``; the runtime writes it to the audit log), so a flood of sockets is seen
without turning into a flood of log lines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import resource
import weakref
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from broker.errors import (
    BrokerError,
    ConnectionLimitError,
    RequestBodyTimeoutError,
    RequestHeaderTimeoutError,
)
from broker.http.one_write import HeadWithBody
from broker.protocols.a2a.wire import error_headers, rest_error_body
from broker.settings import ServerSettings

log = logging.getLogger("a2a_broker.connections")

REPORT_PERIOD_S = 1.0
# A refused connection keeps draining the client's bytes this long after the refusal, so the
# client reads the 503 rather than a reset; at most MAX_LINGERING at a time, others close at once.
LINGER_S = 1.0
MAX_LINGERING = 32
# What a connection closed at once (a refusal that cannot linger, a shed or timed-out one) may
# still read of the client's unread bytes, so that the close is a FIN rather than a reset.
DRAIN_BYTES = 256 * 1024
# File descriptors kept free for everything but client connections: Redis, audit files, the
# listening socket, logs, and refused connections while they linger.
FD_RESERVE = 64 + MAX_LINGERING

Phase = Literal["headers", "body", "busy", "idle"]
Observer = Callable[[dict[str, int]], None]
_observers: list[Observer] = []


class ConnectionBounds(msgspec.Struct, frozen=True, kw_only=True):
    """What every connection of a worker is held to (see the module docstring)."""

    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    max_connections: int


def bounds_for(server: ServerSettings, upstream_pool_size: int) -> ConnectionBounds:
    """The configured bounds, with ``max_connections`` lowered to what the open-file limit
    leaves after the upstream pool and ``FD_RESERVE`` (a warning says so)."""
    cap = server.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        room = max(1, soft - upstream_pool_size - FD_RESERVE)
        if room < cap:
            log.warning(
                "[server] max_connections %d lowered to %d to fit the open-file limit %d "
                "(minus %d for the upstream pool and %d reserved)",
                cap, room, soft, upstream_pool_size, FD_RESERVE,
            )  # fmt: skip
            cap = room
    return ConnectionBounds(
        header_timeout_s=server.header_timeout_s,
        body_timeout_s=server.body_timeout_s,
        idle_timeout_s=server.idle_timeout_s,
        max_connections=cap,
    )


def protocol_factory(bounds: ConnectionBounds) -> Callable[..., asyncio.Protocol]:
    """What to give uvicorn as ``http``: picklable, so every worker process gets the bounds."""
    return functools.partial(BoundedHttpToolsProtocol, bounds=bounds)


def observe(observer: Observer) -> Callable[[], None]:
    """Call ``observer`` with each second's counts (``open``, ``cap``, ``refused``, ``shed``,
    ``header_timeouts``, ``body_timeouts``) when any is non-zero; returns the undo."""
    _observers.append(observer)
    return lambda: _observers.remove(observer) if observer in _observers else None


def close_drained(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` after discarding what the client sent that nobody read (up to
    ``DRAIN_BYTES``, without waiting for more).

    Closing a socket with unread bytes makes the kernel send a reset instead of a FIN, and a
    client that gets the reset may lose the answer just written (a refusal's 503, a timeout's
    408): its read fails instead. The transport offers no read of its own, so the bytes are
    read from its descriptor; the loop is not reading it meanwhile (this runs on the loop).
    A transport already closing is left alone: its descriptor may be closed, and its number
    another connection's. Under TLS the bytes below are the TLS layer's, so it only closes."""
    if transport.is_closing():
        return
    if transport.get_extra_info("sslcontext") is not None:
        transport.close()
        return
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    left = DRAIN_BYTES
    while fd >= 0 and left > 0:
        try:
            chunk = os.read(fd, left)
        except OSError:  # nothing more yet (BlockingIOError), or the client is gone already
            break
        if not chunk:
            break
        left -= len(chunk)
    transport.close()


def _refusal(err: BrokerError) -> bytes:
    """A whole HTTP/1.1 response carrying ``err`` in the REST error shape, closing the
    connection (the request, if any, was not read)."""
    body = rest_error_body(err)
    headers = {"content-type": "application/json", "content-length": str(len(body)),
               "connection": "close", **error_headers(err)}  # fmt: skip
    head = f"HTTP/1.1 {err.http_status} {_STATUS_TEXT[err.http_status]}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return head.encode("latin-1") + b"\r\n" + body


_STATUS_TEXT = {408: "Request Timeout", 503: "Service Unavailable"}
_CONNECTION_LIMIT = _refusal(ConnectionLimitError())
_HEADER_TIMEOUT = _refusal(RequestHeaderTimeoutError())
_BODY_TIMEOUT = _refusal(RequestBodyTimeoutError())


class _Tally:
    """Counts of one report period; one log line (and observer call) per period with events."""

    def __init__(self, table: ConnectionTable) -> None:
        self._table = table
        self._counts: dict[str, int] = {}
        self._flush: asyncio.TimerHandle | None = None

    def count(self, event: str) -> None:
        self._counts[event] = self._counts.get(event, 0) + 1
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(REPORT_PERIOD_S, self.report)

    def report(self) -> None:
        self._flush = None
        counts, self._counts = self._counts, {}
        if not counts:
            return
        summary = {"open": self._table.open_count, "cap": self._table.cap, "refused": 0,
                   "shed": 0, "header_timeouts": 0, "body_timeouts": 0, **counts}  # fmt: skip
        log.warning(
            "connections: %(open)d open (cap %(cap)d); in the last second %(refused)d refused "
            "(503 CONNECTION_LIMIT), %(shed)d waiting ones closed to make room, "
            "%(header_timeouts)d header timeouts, %(body_timeouts)d body timeouts",
            summary,
        )
        for observer in list(_observers):
            try:
                observer(summary)
            except Exception:
                log.exception("connection observer failed")


class ConnectionTable:
    """The admitted connections of one worker; the waiting ones (idle, or without complete
    headers) in the order they started waiting, so the oldest is shed first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: set[BoundedHttpToolsProtocol] = set()
        self._waiting: dict[BoundedHttpToolsProtocol, None] = {}
        self.lingering = 0
        self.tally = _Tally(self)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def admit(self, conn: BoundedHttpToolsProtocol) -> bool:
        """Take ``conn`` in, shedding the oldest waiting connection if the cap is reached;
        False (refuse it) if every open connection is busy."""
        if len(self._open) >= self.cap:
            if not self._waiting:
                self.tally.count("refused")
                return False
            victim = next(iter(self._waiting))
            self.remove(victim)
            victim.shed()
            self.tally.count("shed")
        self._open.add(conn)
        return True

    def waiting(self, conn: BoundedHttpToolsProtocol) -> None:
        if conn in self._open:
            self._waiting.pop(conn, None)
            self._waiting[conn] = None  # newest last

    def busy(self, conn: BoundedHttpToolsProtocol) -> None:
        self._waiting.pop(conn, None)

    def remove(self, conn: BoundedHttpToolsProtocol) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)


_tables: weakref.WeakKeyDictionary[ServerState, ConnectionTable] = weakref.WeakKeyDictionary()


def _table(server_state: ServerState, cap: int) -> ConnectionTable:
    table = _tables.get(server_state)
    if table is None:
        table = _tables[server_state] = ConnectionTable(cap)
    return table


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the broker's connection bounds."""

    def __init__(self, *args: Any, bounds: ConnectionBounds, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds = bounds
        self._table = _table(self.server_state, bounds.max_connections)
        self._phase: Phase = "headers"
        # One timer per connection, re-armed lazily (see ``_arm``): the current phase's deadline
        # (loop time; inf when none) and what to do when it passes.
        self._deadline = math.inf
        self._expired: Callable[[], None] = _nothing
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._refused = False

    # -- life cycle --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self._table.admit(self):
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._refused:
            self._table.lingering -= 1
            return
        self._table.remove(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # drained: the refusal is already on its way
        if self._phase == "idle":
            self._await_headers()  # the next request's header deadline starts at its first byte
        super().data_received(data)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()

    # -- parser callbacks --------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._phase = "body"
        self._table.busy(self)
        self._arm(self._bounds.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # this request's cycle
            # Its head waits for its body: a unary answer is one write (broker.http.one_write).
            cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._phase = "busy"
        self._deadline = math.inf
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's own, except that the idle timeout is this connection's timer, not a
        # keep-alive timer of uvicorn's armed and cancelled once a request.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._phase == "busy":
            self._phase = "idle"
            self._table.waiting(self)
            self._arm(self._bounds.idle_timeout_s, self._idle_timed_out)

    # -- bounds ------------------------------------------------------------------------------

    def shed(self) -> None:
        """Closed to make room for a new connection (it was waiting, so nothing is lost)."""
        self._stop_timer()
        if self._phase == "headers" and not self.transport.is_closing():
            self.transport.write(_CONNECTION_LIMIT)
        close_drained(self.transport)

    def _await_headers(self) -> None:
        self._phase = "headers"
        self._table.waiting(self)
        self._arm(self._bounds.header_timeout_s, self._headers_timed_out)

    def _idle_timed_out(self) -> None:
        if self._phase == "idle" and not self.transport.is_closing():
            self.transport.close()

    def _headers_timed_out(self) -> None:
        if self._phase == "headers" and not self.transport.is_closing():
            self._table.tally.count("header_timeouts")
            self.transport.write(_HEADER_TIMEOUT)
            close_drained(self.transport)

    def _body_timed_out(self) -> None:
        if self._phase != "body" or self.transport.is_closing():
            return
        self._table.tally.count("body_timeouts")
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(_BODY_TIMEOUT)
        if cycle is not None:  # the application's receive() now says the client went away
            cycle.disconnected = True
            cycle.message_event.set()
        close_drained(self.transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 before reading anything, stop writing, drain briefly, then close."""
        self._refused = True
        self.transport = transport
        transport.write(_CONNECTION_LIMIT)
        if self._table.lingering >= MAX_LINGERING or not transport.can_write_eof():
            self._table.lingering += 1  # connection_lost takes it off again
            close_drained(transport)
            return
        self._table.lingering += 1
        transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, transport.close)

    def _arm(self, delay: float, expired: Callable[[], None]) -> None:
        """Call ``expired`` ``delay`` seconds from now unless the phase changes first.

        A request passes through three deadlines (headers, body, idle); arming and cancelling a
        loop timer for each cost about 1.2 µs apiece (uvloop). Instead the connection keeps one
        timer and moves only its deadline: a timer due at or before the new deadline is kept
        (when it fires early it re-arms for the deadline then in force), and only one due later
        than the new deadline is replaced. Under steady keep-alive traffic that is one timer
        firing per ``idle_timeout_s`` per connection instead of six timer calls a request.
        """
        deadline = self.loop.time() + delay
        self._deadline = deadline
        self._expired = expired
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._fire)
            self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        deadline = self._deadline
        if deadline == math.inf:
            return  # no deadline in this phase: the next one arms again
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._fire)
            self._timer_at = deadline
            return
        self._deadline = math.inf
        self._expired()

    def _stop_timer(self) -> None:
        self._deadline = math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf


def _nothing() -> None:
    pass

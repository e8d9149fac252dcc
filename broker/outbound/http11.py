"""The broker's ``Transport``: a lean HTTP/1.1 client for agents, LLM providers and MCP servers.

aiohttp costs ~65 us of CPU per request over a minimal pooled client (docs/decisions/0071), most
of it in machinery the broker does not use (cookies, redirects, decompression, traces, payload
objects). This client writes each request as one buffer on a pooled keep-alive connection
(``broker.outbound.pool``) and reads the answer with httptools (``broker.outbound.connection``).
It keeps what ``AiohttpTransport`` promises: every URL and every connected address passes the
egress rules, no redirects are followed, nothing is decoded, the pool is bounded, the same
timeouts and the same broker errors (``broker.outbound.errors``, the one table). Agent-card
fetches, HEAD and CONNECT stay on aiohttp (``AiohttpTransport``), which this transport owns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType

from broker.errors import UpstreamResponseTooLargeError
from broker.outbound.client import AiohttpTransport
from broker.outbound.connection import UpstreamConnection
from broker.outbound.egress import EgressPolicy, is_numeric_host
from broker.outbound.errors import CLIENT_ERRORS, UpstreamClosedError, transport_error
from broker.outbound.pool import ConnectionPool, Connector, PoolKey, tls_context
from broker.outbound.transport import StreamTimeouts, TransportResponse
from broker.settings import EgressSettings, LimitSettings, RegistrySettings

# Sent once more when the connection closes before any answer (RFC 9112 section 9.3.1.1), as
# aiohttp does for these; a JSON-RPC read (POST) is sent again only when the caller says so.
_IDEMPOTENT = frozenset({"GET", "OPTIONS", "TRACE", "PUT", "DELETE"})
_ON_AIOHTTP = frozenset({"HEAD", "CONNECT"})  # answers without a body the parser cannot know of
_EMPTY_BODY_LENGTH = frozenset({"POST", "PUT", "PATCH"})  # aiohttp sends Content-Length: 0


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL the egress rules passed, ready to be written: pool key and request-line tail."""

    key: PoolKey
    literal: bool  # an IP-literal host: connected to as is, never resolved
    line: bytes  # " /path?query HTTP/1.1\r\nHost: host[:port]\r\n"


class Http11Transport:
    """The broker's outbound HTTP client (``broker.outbound.transport.Transport``).

    Build it inside the running event loop at start-up, share it, ``await close()`` at shutdown.
    """

    def __init__(
        self, egress: EgressSettings, limits: LimitSettings, registry: RegistrySettings
    ) -> None:
        self.cards = AiohttpTransport(egress, limits, registry)
        self.egress: EgressPolicy = self.cards.egress
        self._limits = limits
        self._pool = ConnectionPool(limits.upstream_pool_size)
        self._connector = Connector(self.egress, tls_context())
        self._targets: dict[str, _Target] = {}

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        stream: bool,
        reads_only: bool = False,
        timeouts: StreamTimeouts | None = None,
    ) -> TransportResponse:
        """``Transport.send``. Raises EgressDeniedError, UpstreamUnreachableError,
        UpstreamConnectTimeoutError, UpstreamPoolExhaustedError, UpstreamTimeoutError or
        UpstreamBadResponseError."""
        method = method.upper()
        if method in _ON_AIOHTTP:
            return await self.cards.send(
                method, url, headers=headers, body=body, stream=stream, reads_only=reads_only,
                timeouts=timeouts,
            )  # fmt: skip
        target = self._target(url)
        request = _request(method, target.line, headers, body)
        limits = self._limits
        idle_s: float | None = None
        wait_s = limits.upstream_timeout_s  # unary: the whole exchange, body included
        if stream:
            idle_s = timeouts.idle_s if timeouts is not None else limits.sse_idle_timeout_s
            headers_s = timeouts.headers_s if timeouts is not None else wait_s
            wait_s = min(headers_s, idle_s)  # a stream's idle bound already runs for its headers
        retry = reads_only or method in _IDEMPOTENT
        try:
            return await self._exchange(target, request, wait_s, idle_s, retry=retry)
        except CLIENT_ERRORS as exc:
            raise transport_error(exc) from None

    async def fetch_card(self, url: str) -> bytes:
        """``Transport.fetch_card``, on aiohttp (rare, and its own bounds)."""
        return await self.cards.fetch_card(url)

    async def close(self) -> None:
        self._pool.close()
        await self.cards.close()

    async def __aenter__(self) -> Http11Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _exchange(
        self, target: _Target, request: bytes, wait_s: float, idle_s: float | None, *, retry: bool
    ) -> _Http11Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        key = target.key

        async def open_() -> UpstreamConnection:
            return await self._connector.open(key, target.literal)

        fresh = False
        while True:
            connect_s = min(self._limits.upstream_connect_timeout_s, deadline - loop.time())
            conn = await self._pool.acquire(key, open_, connect_s, fresh=fresh)
            timer = loop.call_at(deadline, conn.expire)
            try:
                conn.start(request)
                await conn.headers_arrived()
            except UpstreamClosedError:
                timer.cancel()
                self._pool.release(key, conn)
                if not retry:
                    raise
                # Closed before any answer: a read goes once more, on a new connection (the
                # other idle ones are likely as stale: an upstream that restarted closed all).
                retry, fresh = False, True
                continue
            except BaseException:
                timer.cancel()
                conn.close()
                self._pool.release(key, conn)
                raise
            if idle_s is None:
                return _Http11Response(self._pool, key, conn, timer, None)
            timer.cancel()  # a stream is bounded by its idle time from here on
            return _Http11Response(self._pool, key, conn, None, idle_s)

    def _target(self, url: str) -> _Target:
        """The checked, parsed URL; cached, since the egress verdict on a URL never changes
        (the addresses it reaches are judged on every connect)."""
        if (target := self._targets.get(url)) is not None:
            return target
        parsed = self.egress.check_url(url)
        host = parsed.raw_host or ""  # IDNA-encoded, as aiohttp resolves and connects
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        path = parsed.raw_path_qs or "/"
        line = f" {path} HTTP/1.1\r\nHost: {parsed.host_port_subcomponent}\r\n".encode()
        target = _Target((parsed.scheme, host, port), is_numeric_host(host), line)
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[url] = target
        return target


def _request(method: str, line: bytes, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """The request as written on the wire. Raises ValueError for a header with CR or LF."""
    parts = [method]
    typed = False
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError("Newline or carriage return character detected in HTTP header")
        parts.append(f"{name}: {value}\r\n")
        typed = typed or name.lower() == "content-type"
    if body:
        if not typed:
            parts.append("Content-Type: application/octet-stream\r\n")
        parts.append(f"Content-Length: {len(body)}\r\n\r\n")
    elif method in _EMPTY_BODY_LENGTH:
        parts.append("Content-Length: 0\r\n\r\n")
    else:
        parts.append("\r\n")
    head = "".join(parts[1:]).encode()
    return b"".join((method.encode(), line, head, body or b""))


class _Http11Response:
    """``TransportResponse`` of the lean client; the connection returns to the pool once the
    body was read to its end, and is closed if the caller stops before."""

    __slots__ = (
        "_conn", "_idle_s", "_key", "_pool", "_timer", "content_type", "headers",
        "is_event_stream", "status",
    )  # fmt: skip

    def __init__(
        self,
        pool: ConnectionPool,
        key: PoolKey,
        conn: UpstreamConnection,
        timer: asyncio.TimerHandle | None,
        idle_s: float | None,
    ) -> None:
        self._pool = pool
        self._key = key
        self._conn: UpstreamConnection | None = conn
        self._timer = timer
        self._idle_s = idle_s
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers
        self.content_type = conn.headers.get("content-type", "application/json")
        self.is_event_stream = self.content_type.startswith("text/event-stream")

    async def read(self, max_bytes: int) -> bytes:
        conn = self._conn
        assert conn is not None  # noqa: S101 - read once, before close
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            self.close()
            raise UpstreamResponseTooLargeError()
        chunks: list[bytes] = []  # mostly one: the body is then relayed as it was read
        size = 0
        try:
            while chunk := await conn.next_chunk():
                size += len(chunk)
                if size > max_bytes:
                    raise UpstreamResponseTooLargeError()
                chunks.append(chunk)
        except CLIENT_ERRORS as exc:
            raise transport_error(exc) from None
        finally:
            self.close()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None  # noqa: S101 - read once, before close
        loop = asyncio.get_running_loop()
        try:
            while True:
                idle = None if self._idle_s is None else loop.call_later(self._idle_s, conn.expire)
                try:
                    chunk = await conn.next_chunk()
                finally:
                    if idle is not None:
                        idle.cancel()
                if not chunk:
                    break
                yield chunk
        except CLIENT_ERRORS as exc:
            raise transport_error(exc, streaming=self._idle_s is not None) from None
        finally:
            self.close()  # also when the reader stops early: the rest is never read

    def close(self) -> None:
        """Back to the pool if the whole answer was read (and kept alive), else closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if (conn := self._conn) is not None:
            self._conn = None
            if not conn.complete:
                conn.close()
            self._pool.release(self._key, conn)

    def __del__(self) -> None:
        # A response dropped unclosed would hold its pool slot for good (aiohttp's releases too).
        if (conn := self._conn) is not None:
            self._conn = None
            conn.close()  # not back to the pool: no loop may be running by now
            self._pool.release(self._key, conn)

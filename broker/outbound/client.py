"""A ``Transport`` on one pooled aiohttp client, on top of the egress rules.

The broker's transport is ``broker.outbound.http11.Http11Transport``; it keeps this one for
agent-card fetches, HEAD and CONNECT (decision 0071), and the tests run both side by side.

aiohttp and OS errors become broker errors through ``broker.outbound.errors``, the one table.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType

import aiohttp
from aiohttp.typedefs import LooseHeaders
from yarl import URL

from broker.errors import (
    AgentCardFetchError,
    BrokerError,
    UpstreamPoolExhaustedError,
    UpstreamResponseTooLargeError,
)
from broker.outbound.egress import EgressPolicy, EgressResolver
from broker.outbound.errors import CLIENT_ERRORS, card_fetch_error, transport_error
from broker.outbound.transport import StreamTimeouts, TransportResponse
from broker.settings import EgressSettings, LimitSettings, RegistrySettings

# What a request sent on a connection the upstream had closed meets before any answer: the
# server's close (ServerDisconnectedError) or a reset (ClientOSError). The same as aiohttp's own
# retry of idempotent methods (RFC 9112 section 9.3.1.1), which covers these HTTP methods:
_STALE_CONNECTION_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_RETRIED_BY_AIOHTTP = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Accept-Encoding would invite bodies the broker cannot inspect; User-Agent would leak versions.
_SKIPPED_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")
_CARD_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}
_DNS_TTL_S = 10  # short: a changed record is picked up soon; every answer is re-checked anyway
# Only Pythons without CPython PR 118960 leak closed TLS transports; aiohttp warns if asked later.
_NEEDS_CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


class AiohttpTransport:
    """The broker's one outbound HTTP client (``broker.outbound.transport.Transport``).

    Pooled; every URL and every connected address passes the egress policy; redirects are never
    followed (a 3xx is returned as is); no cookies are kept; proxy environment variables are
    ignored; bodies are relayed undecoded. Build it inside the running event loop at start-up,
    share it, and ``await close()`` at shutdown.
    """

    def __init__(
        self, egress: EgressSettings, limits: LimitSettings, registry: RegistrySettings
    ) -> None:
        self.egress = EgressPolicy(egress)
        self._max_response_bytes = limits.max_response_bytes
        self._max_card_bytes = registry.max_card_bytes
        connect = limits.upstream_connect_timeout_s
        card = registry.card_fetch_timeout_s
        self._unary_timeout = aiohttp.ClientTimeout(
            total=limits.upstream_timeout_s, connect=connect, sock_connect=connect
        )
        self._header_timeout_s = limits.upstream_timeout_s
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=limits.sse_idle_timeout_s
        )
        self._card_timeout = aiohttp.ClientTimeout(
            total=card, connect=min(connect, card), sock_connect=min(connect, card)
        )
        connector = aiohttp.TCPConnector(
            limit=limits.upstream_pool_size,
            resolver=EgressResolver(self.egress),
            socket_factory=self.egress.guarded_socket,
            ttl_dns_cache=_DNS_TTL_S,
            enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=_SKIPPED_AUTO_HEADERS,
        )

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
        """``Transport.send``: ``request`` with the answer wrapped for the stages."""
        response = await self.request(
            method, url, headers=dict(headers), body=body, stream=stream, retry_stale=reads_only,
            timeouts=timeouts,
        )  # fmt: skip
        return _AiohttpResponse(self, response)

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        headers: LooseHeaders | None = None,
        body: bytes | None = None,
        stream: bool = False,
        retry_stale: bool = False,
        timeouts: StreamTimeouts | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request and return the response once its headers have arrived.

        The caller must release it (``async with response:``) and should read it with
        ``read_body`` or ``iter_chunks``. A 3xx is returned, not followed. ``stream`` swaps the
        total timeout for an idle timeout. ``retry_stale``: the request only reads, so it is
        sent once more if the connection is closed under it before an answer (a pooled
        keep-alive connection the upstream had closed; aiohttp does this itself for GET, HEAD,
        PUT and DELETE, not for POST, which carries JSON-RPC reads). Raises EgressDeniedError,
        UpstreamUnreachableError, UpstreamConnectTimeoutError, UpstreamTimeoutError or
        UpstreamBadResponseError. ``timeouts`` (streams only): the wait for headers and the
        idle bound of this request instead of ``[limits]``'s.
        """
        timeout = self._stream_timeout if stream else self._unary_timeout
        header_timeout_s = self._header_timeout_s
        if stream and timeouts is not None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=timeout.connect, sock_connect=timeout.sock_connect,
                sock_read=timeouts.idle_s,
            )  # fmt: skip
            header_timeout_s = timeouts.headers_s
        retry = retry_stale and method.upper() not in _RETRIED_BY_AIOHTTP
        if not stream:
            return await self._send(method, url, headers, body, timeout, retry_stale=retry)
        try:
            # A stream's idle timeout starts once it flows; until its headers arrive the
            # upstream gets the unary deadline, so a hanging agent fails as UPSTREAM_TIMEOUT.
            async with asyncio.timeout(header_timeout_s):
                return await self._send(method, url, headers, body, timeout, retry_stale=retry)
        except TimeoutError as exc:
            raise transport_error(exc) from None

    async def read_body(
        self, response: aiohttp.ClientResponse, *, limit: int | None = None
    ) -> bytes:
        """A unary response's whole body, at most ``limit`` bytes (default max_response_bytes).

        Raises UpstreamResponseTooLargeError, UpstreamTimeoutError, UpstreamUnreachableError or
        UpstreamBadResponseError.
        """
        return await _read_limited(
            response,
            self._max_response_bytes if limit is None else limit,
            UpstreamResponseTooLargeError,
        )

    async def iter_chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """A streamed body's bytes as they arrive.

        Raises StreamIdleTimeoutError when nothing arrives for sse_idle_timeout_s, and the errors
        of ``read_body`` otherwise. The maximum stream duration is the caller's scope to set.
        """
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except CLIENT_ERRORS as exc:
            raise transport_error(exc, streaming=True) from None

    async def fetch_card(self, url: str | URL) -> bytes:
        """GET an agent card's bytes: no redirects, at most max_card_bytes, card_fetch_timeout_s.

        Raises EgressDeniedError for a refused destination and AgentCardFetchError otherwise.
        """
        try:
            response = await self._send("GET", url, _CARD_HEADERS, None, self._card_timeout)
            async with response:
                if (error := _card_response_error(response)) is not None:
                    raise error
                return await _read_limited(response, self._max_card_bytes, _card_too_large)
        except BrokerError as exc:
            raise card_fetch_error(exc) from None

    async def close(self) -> None:
        """Close every pooled connection; the client cannot be used afterwards."""
        await self._session.close()

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(
        self,
        method: str,
        url: str | URL,
        headers: LooseHeaders | None,
        body: bytes | None,
        limits: aiohttp.ClientTimeout,
        *,
        retry_stale: bool = False,
    ) -> aiohttp.ClientResponse:
        target = self.egress.check_url(url)

        async def send() -> aiohttp.ClientResponse:
            return await self._session.request(
                method, target, headers=headers, data=body, allow_redirects=False, timeout=limits
            )

        try:
            try:
                return await send()
            except _STALE_CONNECTION_ERRORS as exc:
                if not retry_stale or isinstance(exc, aiohttp.ClientConnectorError):
                    raise  # a refused or failed connect is no stale connection: not retried
                return await send()
        except CLIENT_ERRORS as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError) and self._pool_full():
                raise UpstreamPoolExhaustedError(detail=f"{type(exc).__name__}: {exc}") from None
            raise transport_error(exc) from None

    def _pool_full(self) -> bool:
        """Every pooled connection is in use: a connect timeout was a wait for the pool."""
        connector = self._session.connector
        if connector is None or not connector.limit:
            return False
        # aiohttp keeps the connections in use in ``_acquired``; it has no public count.
        return len(getattr(connector, "_acquired", ())) >= connector.limit


async def _read_limited(
    response: aiohttp.ClientResponse, limit: int, too_large: Callable[[], BrokerError]
) -> bytes:
    """Read the body incrementally, stopping as soon as it exceeds ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise too_large()
    body = bytearray()
    try:
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise too_large()
    except CLIENT_ERRORS as exc:
        raise transport_error(exc) from None
    return bytes(body)


def _card_too_large() -> BrokerError:
    return AgentCardFetchError("The agent card is larger than the broker accepts.")


def _card_response_error(response: aiohttp.ClientResponse) -> AgentCardFetchError | None:
    status = response.status
    if 300 <= status < 400:
        return AgentCardFetchError(
            f"The agent card URL answered with a redirect (HTTP {status}); the broker does not "
            "follow redirects, so register the card's final URL."
        )
    if status != 200:
        return AgentCardFetchError(f"The agent card URL answered HTTP {status}; expected 200.")
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return AgentCardFetchError("The agent card URL answered with a compressed body.")
    return None


class _AiohttpResponse:
    """``TransportResponse`` over an aiohttp response read through the transport."""

    def __init__(self, client: AiohttpTransport, response: aiohttp.ClientResponse) -> None:
        self._client = client
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in response.headers.items()}
        self.content_type = response.headers.get("content-type", "application/json")
        self.is_event_stream = self.content_type.startswith("text/event-stream")

    async def read(self, max_bytes: int) -> bytes:
        return await self._client.read_body(self._response, limit=max_bytes)

    def chunks(self) -> AsyncIterator[bytes]:
        return self._client.iter_chunks(self._response)

    def close(self) -> None:
        self._response.close()

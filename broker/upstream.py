"""What the mediation stages need from the outbound HTTP client, and its aiohttp implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp

from broker.upstream_client import UpstreamClient


class UpstreamResponse(Protocol):
    """An upstream answer whose body has not been read yet. Read errors are BrokerErrors."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers, lower-case names."""

    @property
    def content_type(self) -> str: ...

    @property
    def is_event_stream(self) -> bool: ...

    async def read(self, max_bytes: int) -> bytes:
        """The whole body; UpstreamResponseTooLargeError past ``max_bytes``."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (for streams); idle reads end with StreamIdleTimeoutError."""

    def close(self) -> None:
        """Release the connection; safe to call more than once."""


class Upstream(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        stream: bool,
        reads_only: bool = False,
    ) -> UpstreamResponse:
        """Send one request (egress rules applied, no redirects followed) and return the answer
        once its headers arrived. ``reads_only``: the request may be sent again if a pooled
        connection turns out closed. Failures raise the broker's upstream errors."""


class _AiohttpResponse:
    """UpstreamResponse over an aiohttp response read through the egress-safe client."""

    def __init__(self, client: UpstreamClient, response: aiohttp.ClientResponse) -> None:
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


class AiohttpUpstream:
    """The mediation stages' Upstream, on the broker's one pooled aiohttp client."""

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        stream: bool,
        reads_only: bool = False,
    ) -> UpstreamResponse:
        response = await self._client.request(
            method, url, headers=dict(headers), body=body, stream=stream, retry_stale=reads_only
        )
        return _AiohttpResponse(self._client, response)

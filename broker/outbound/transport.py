"""The one interface every outbound call of the broker goes through.

Agents (mediated calls and the broker's own CancelTask), LLM providers and agent-card fetches
all use a ``Transport``. The broker's is ``Http11Transport`` (``broker.outbound.http11``; card
fetches go through its ``AiohttpTransport``, ``broker.outbound.client``): the egress rules
(``broker.outbound.egress``) apply to every URL and every connected address, and its failures
are broker errors (``broker.outbound.errors``, the one table). Tests use ``FakeTransport``
(``broker.outbound.fake``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from broker.outbound.egress import EgressPolicy


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    """How long a streamed request may wait for the answer's headers, then stay quiet."""

    headers_s: float
    idle_s: float


class TransportResponse(Protocol):
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


class Transport(Protocol):
    @property
    def egress(self) -> EgressPolicy:
        """The destinations this transport may connect to (also judged at registration and
        for push URLs, which the broker does not call itself)."""

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
        """Send one request (egress rules applied, no redirects followed) and return the answer
        once its headers arrived. ``stream`` swaps the total timeout for an idle timeout.
        ``reads_only``: the request may be sent again if a pooled connection turns out closed.
        ``timeouts``: a stream's own wait for headers and idle bound (an MCP server's), instead
        of the broker's ``[limits]`` for agents.
        Failures raise the broker's upstream errors (``broker.outbound.errors``)."""

    async def fetch_card(self, url: str) -> bytes:
        """GET an agent card's bytes (no redirects, size- and time-bounded). Raises
        EgressDeniedError for a refused destination and AgentCardFetchError otherwise."""

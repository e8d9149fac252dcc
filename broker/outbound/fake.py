"""A ``Transport`` that answers from a function instead of the network, for tests.

Like ``httpx.MockTransport``: each request is recorded and handed to ``handler``, which returns
a ``FakeResponse`` (or raises a BrokerError, as the real transport would). The egress rules
still judge every URL, so a test sees the refusals the broker's real transport makes before
anything is sent. Nothing here opens a socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from broker.errors import AgentCardFetchError, UpstreamResponseTooLargeError
from broker.outbound.egress import EgressPolicy
from broker.outbound.transport import StreamTimeouts
from broker.settings import EgressSettings


@dataclass(frozen=True, slots=True)
class FakeRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    stream: bool
    reads_only: bool


@dataclass(slots=True)
class FakeResponse:
    """An answer: ``body`` for a unary one, ``chunks`` for a stream (the body is then ignored)."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks_: Sequence[bytes] | None = None
    closed: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/json")

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def read(self, max_bytes: int) -> bytes:
        if len(self.body) > max_bytes:
            raise UpstreamResponseTooLargeError
        return self.body

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks_ if self.chunks_ is not None else [self.body]:
            yield chunk

    def close(self) -> None:
        self.closed = True


Handler = Callable[[FakeRequest], Awaitable[FakeResponse]]


class FakeTransport:
    """Records every request in ``sent`` and answers it with ``handler``."""

    def __init__(self, handler: Handler, egress: EgressSettings | None = None) -> None:
        self._handler = handler
        self.egress = EgressPolicy(egress or EgressSettings(allow_loopback=True))
        self.sent: list[FakeRequest] = []

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
    ) -> FakeResponse:
        self.egress.check_url(url)
        request = FakeRequest(method, url, dict(headers), body, stream, reads_only)
        self.sent.append(request)
        response = await self._handler(request)
        response.headers = {k.lower(): v for k, v in response.headers.items()}
        return response

    async def fetch_card(self, url: str) -> bytes:
        response = await self.send("GET", url, headers={}, body=None, stream=False)
        if response.status != 200:
            raise AgentCardFetchError(
                f"The agent card URL answered HTTP {response.status}; expected 200."
            )
        return response.body


def answering(*responses: FakeResponse) -> Handler:
    """A handler that gives ``responses`` in turn, the last one again once they run out."""
    queue = list(responses)

    async def handler(_: FakeRequest) -> FakeResponse:
        response = queue.pop(0) if len(queue) > 1 else queue[0]
        return FakeResponse(response.status, response.body, response.headers, response.chunks_)

    return handler

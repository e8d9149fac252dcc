"""The upstream client and its egress rules, against real aiohttp servers on 127.0.0.1.

Every connect() the process makes is recorded through an audit hook, so a test can show that a
refused destination was refused before any packet left, and every test fails if anything connects
to an address other than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from broker.errors import (
    AgentCardFetchError,
    EgressDeniedError,
    StreamIdleTimeoutError,
    UpstreamConnectTimeoutError,
    UpstreamPoolExhaustedError,
    UpstreamResponseTooLargeError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from broker.outbound.client import AiohttpTransport
from broker.outbound.egress import (
    EgressPolicy,
    EgressResolver,
    check_push_url,
)
from broker.outbound.errors import transport_error
from broker.outbound.http11 import Http11Transport
from broker.outbound.transport import Transport, TransportResponse
from broker.settings import EgressSettings, LimitSettings, RegistrySettings
from testkit.connects import ConnectLog
from testkit.procs import free_port

# --- every connect() in the process, recorded (testkit.connects) ---------------------------------

@pytest.fixture(autouse=True)
def connects() -> Iterator[ConnectLog]:
    log = ConnectLog()
    yield log
    strays = [a for a in log.addresses if not (isinstance(a, tuple) and a[0] == "127.0.0.1")]
    assert not strays, f"connected beyond 127.0.0.1: {strays}"


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Upstream:
    port: int
    hits: list[web.Request]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.hits]


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    await asyncio.sleep(30)  # then fall silent
    return response


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(16):
        await response.write(b"x" * 1024)
    await response.write_eof()
    return response


def _reply(**response: Any) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(**response)

    return handler


async def _echo_headers(request: web.Request) -> web.StreamResponse:
    return web.json_response(dict(request.headers))


GZIPPED = gzip.compress(b'{"a": 1}', mtime=0)
ROUTES: dict[str, Callable[[web.Request], Any]] = {
    "/": _reply(text="ok"),
    "/redirect": _reply(status=302, headers={"Location": "/target"}),
    "/target": _reply(text="target"),
    "/card": _reply(text='{"name": "echo"}', content_type="application/json"),
    "/missing": _reply(status=404, text="no"),
    "/big": _reply(text="x" * 4096),
    "/big-chunked": _chunked,
    "/stream": _stream,
    "/gzip": _reply(body=GZIPPED, headers={"Content-Encoding": "gzip"}),
    "/cookie": _reply(text="ok", headers={"Set-Cookie": "session=1"}),
    "/headers": _echo_headers,
}


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    hits: list[web.Request] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        hits.append(request)
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    for path, handler in ROUTES.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Upstream(port=runner.addresses[0][1], hits=hits)
    await runner.cleanup()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts connections and never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture(params=[AiohttpTransport, Http11Transport], ids=["aiohttp", "http11"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Client]]:
    """Every transport-level test runs against both of the broker's transports."""
    kind: type[Client] = request.param
    clients: list[Client] = []

    def make(
        *,
        loopback: bool = True,
        private: bool = False,
        limits: LimitSettings | None = None,
        registry: RegistrySettings | None = None,
    ) -> Client:
        egress = EgressSettings(allow_loopback=loopback, allow_private=private)
        client = kind(egress, limits or LimitSettings(), registry or RegistrySettings())
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


Client = AiohttpTransport | Http11Transport


async def send(
    client: Transport, method: str, url: str, *, body: bytes | None = None, stream: bool = False
) -> TransportResponse:
    return await client.send(method, url, headers={}, body=body, stream=stream)


@contextlib.asynccontextmanager
async def answer(
    client: Transport, method: str, url: str, *, stream: bool = False
) -> AsyncIterator[TransportResponse]:
    response = await send(client, method, url, stream=stream)
    try:
        yield response
    finally:
        response.close()


# --- where the broker may connect ----------------------------------------------------------------


async def test_loopback_is_refused_unless_allowed(make_client, upstream, connects) -> None:
    with pytest.raises(EgressDeniedError, match="loopback"):
        await send(make_client(loopback=False), "GET", upstream.url())
    assert connects.addresses == []
    assert upstream.hits == []

    async with answer(make_client(loopback=True), "GET", upstream.url()) as response:
        assert response.status == 200
        assert await response.read(1024) == b"ok"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://192.0.0.192/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:{port}/", "unspecified"),
        ("http://[::]:{port}/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "reserved"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://100.64.0.1/", "private"),
        ("http://[fd12::1]/", "private"),
        ("http://2130706433:{port}/", "plain dotted form"),  # 127.0.0.1, written as one number
        ("http://0x7f.1:{port}/", "plain dotted form"),
        ("ftp://127.0.0.1:{port}/", "scheme 'ftp'"),
        ("http://user:secret@127.0.0.1:{port}/", "user name or password"),
    ],
)
async def test_refused_before_any_connect(make_client, upstream, connects, url, kind) -> None:
    client = make_client(loopback=True, private=False)
    with pytest.raises(EgressDeniedError, match=kind) as refused:
        await send(client, "GET", url.format(port=upstream.port))
    assert "169.254" not in refused.value.message  # says which class, never the address
    assert connects.addresses == []


def test_private_ranges_open_with_allow_private_but_metadata_never() -> None:
    policy = EgressPolicy(EgressSettings(allow_loopback=True, allow_private=True))
    for url in (
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://[fd12::1]/",
    ):
        policy.check_url(url)
    for url in ("http://100.100.100.200/", "http://[fd00:ec2::254]/", "http://169.254.169.254/"):
        with pytest.raises(EgressDeniedError, match="cloud metadata"):
            policy.check_url(url)


async def test_a_name_resolving_to_loopback_is_refused_by_the_resolver(
    make_client, upstream, connects
) -> None:
    with pytest.raises(EgressDeniedError, match="loopback"):
        await send(make_client(loopback=False), "GET", f"http://localhost:{upstream.port}/")
    assert connects.addresses == []


class _StaticResolver(AbstractResolver):
    """Answers like a DNS server that has been rebound to the given addresses."""

    def __init__(self, *addresses: str) -> None:
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self._addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_refused_addresses_and_keeps_the_rest(upstream, connects) -> None:
    policy = EgressPolicy(EgressSettings(allow_loopback=True))
    resolver = EgressResolver(policy, _StaticResolver("169.254.169.254", "127.0.0.1"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        async with session.get(f"http://agent.test:{upstream.port}/") as response:
            assert response.status == 200
    assert connects.addresses == [("127.0.0.1", upstream.port)]


async def test_resolver_refuses_when_every_address_is_refused(connects) -> None:
    policy = EgressPolicy(EgressSettings(allow_loopback=True))
    resolver = EgressResolver(policy, _StaticResolver("169.254.169.254"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as failure:
            await session.get("http://agent.test/")
    error = transport_error(failure.value)
    assert isinstance(error, EgressDeniedError)
    assert "cloud metadata" in error.message
    assert connects.addresses == []


async def test_socket_guard_catches_what_skips_url_check_and_resolver(upstream, connects) -> None:
    # aiohttp never calls the resolver for an IP literal; the guard still sees the address.
    policy = EgressPolicy(EgressSettings(allow_loopback=False))
    connector = aiohttp.TCPConnector(socket_factory=policy.guarded_socket)
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as failure:
            await session.get(upstream.url())
    assert isinstance(transport_error(failure.value), EgressDeniedError)
    assert connects.addresses == []
    assert upstream.hits == []


async def test_push_url_is_refused_when_its_name_resolves_to_a_refused_address() -> None:
    strict = EgressPolicy(EgressSettings(allow_loopback=False))
    with pytest.raises(EgressDeniedError, match="loopback"):
        await check_push_url(strict, "http://localhost:9/callback")
    with pytest.raises(EgressDeniedError, match="cloud metadata"):
        await check_push_url(strict, "http://169.254.169.254/callback")
    await check_push_url(EgressPolicy(EgressSettings(allow_loopback=True)), "http://localhost/cb")


# --- how the client behaves ----------------------------------------------------------------------


async def test_redirects_are_returned_not_followed(make_client, upstream) -> None:
    client = make_client()
    async with answer(client, "GET", upstream.url("/redirect")) as response:
        assert response.status == 302
    with pytest.raises(AgentCardFetchError, match="does not follow redirects"):
        await client.fetch_card(upstream.url("/redirect"))
    assert "/target" not in upstream.paths


async def test_fetch_card_returns_the_bytes_and_refuses_other_statuses(make_client, upstream):
    client = make_client()
    assert await client.fetch_card(upstream.url("/card")) == b'{"name": "echo"}'
    with pytest.raises(AgentCardFetchError, match="HTTP 404"):
        await client.fetch_card(upstream.url("/missing"))
    assert upstream.hits[0].headers["Accept"] == "application/json"


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
async def test_fetch_card_stops_at_max_card_bytes(make_client, upstream, path) -> None:
    client = make_client(registry=RegistrySettings(max_card_bytes=1024))
    with pytest.raises(AgentCardFetchError, match="larger than"):
        await client.fetch_card(upstream.url(path))


async def test_fetch_card_keeps_egress_refusals(make_client, upstream) -> None:
    with pytest.raises(EgressDeniedError):
        await make_client(loopback=False).fetch_card(upstream.url("/card"))
    with pytest.raises(AgentCardFetchError, match="could not be reached"):
        await make_client().fetch_card(f"http://127.0.0.1:{free_port()}/card")


async def test_response_body_is_capped(make_client, upstream) -> None:
    client = make_client(limits=LimitSettings(max_response_bytes=1024))
    for path in ("/big", "/big-chunked"):
        async with answer(client, "GET", upstream.url(path)) as response:
            with pytest.raises(UpstreamResponseTooLargeError):
                await response.read(1024)


async def test_connection_refused_is_unreachable(make_client) -> None:
    with pytest.raises(UpstreamUnreachableError) as failure:
        await send(make_client(), "GET", f"http://127.0.0.1:{free_port()}/")
    assert "refused" not in failure.value.message.lower()  # the OS text stays in detail
    assert failure.value.detail


async def test_silent_upstream_times_out_within_the_total(make_client, silent_port) -> None:
    client = make_client(limits=LimitSettings(upstream_timeout_s=0.3))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError):
        await send(client, "POST", f"http://127.0.0.1:{silent_port}/", body=b"{}")
    assert time.monotonic() - started < 2.0


async def test_connect_timeout_is_its_own_error(make_client) -> None:
    # A listener with a full backlog drops further SYNs, so connect() hangs on loopback.
    with socket.socket() as listener, socket.socket() as first:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        first.connect(listener.getsockname())
        client = make_client(limits=LimitSettings(upstream_connect_timeout_s=0.3))
        with pytest.raises(UpstreamConnectTimeoutError):
            await send(client, "GET", f"http://127.0.0.1:{listener.getsockname()[1]}/")


async def test_a_full_connection_pool_is_its_own_error(make_client, upstream, silent_port) -> None:
    """A request waiting for a pooled connection that never frees up is told so, not told the
    agent could not be reached (a chain of depth d holds d connections of one broker)."""
    client = make_client(limits=LimitSettings(upstream_pool_size=1, upstream_connect_timeout_s=0.3))
    holder = asyncio.create_task(
        send(client, "POST", f"http://127.0.0.1:{silent_port}/", body=b"{}")
    )
    await asyncio.sleep(0.1)  # the only connection is now held by a request that never ends
    try:
        with pytest.raises(UpstreamPoolExhaustedError):
            await send(client, "GET", upstream.url("/"))
    finally:
        holder.cancel()
        with contextlib.suppress(BaseException):
            await holder


async def test_idle_stream_ends_with_stream_idle_timeout(make_client, upstream) -> None:
    client = make_client(limits=LimitSettings(sse_idle_timeout_s=0.3))
    chunks: list[bytes] = []
    async with answer(client, "GET", upstream.url("/stream"), stream=True) as response:
        with pytest.raises(StreamIdleTimeoutError):
            async for chunk in response.chunks():
                chunks.append(chunk)
    assert b"".join(chunks) == b"data: 1\n\n"


async def test_no_cookies_no_proxy_no_decoding(make_client, upstream, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # must be ignored
    client = make_client()
    async with answer(client, "GET", upstream.url("/cookie")) as response:
        await response.read(1024)
    async with answer(client, "GET", upstream.url("/headers")) as response:
        sent = json.loads(await response.read(64 * 1024))
    async with answer(client, "GET", upstream.url("/gzip")) as response:
        assert await response.read(1024) == GZIPPED
    assert "Cookie" not in sent
    assert not {"Accept-Encoding", "User-Agent"} & set(sent)

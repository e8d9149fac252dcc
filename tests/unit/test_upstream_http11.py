"""The lean HTTP/1.1 transport against aiohttp, answer by answer, on real sockets.

A raw TCP server on 127.0.0.1 plays canned answers byte for byte (framing, ``Connection:
close``, informational answers, truncations, garbage); both transports send the same request
and must give the caller the same thing: status, headers and body, or the same broker error.
Then what only the lean client decides itself: keep-alive reuse, the resolver's egress filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.errors import BrokerError, EgressDeniedError
from broker.outbound.client import AiohttpTransport
from broker.outbound.egress import EgressPolicy, EgressRefusedOSError
from broker.outbound.errors import transport_error
from broker.outbound.http11 import Http11Transport
from broker.outbound.pool import Connector, tls_context
from broker.settings import EgressSettings, LimitSettings, RegistrySettings
from testkit.connects import ConnectLog

Client = AiohttpTransport | Http11Transport
Outcome = tuple[int, dict[str, str], bytes] | tuple[str, str]

@dataclass
class Player:
    """Answers each request it reads with the next canned answer, then closes if told to."""

    answers: list[bytes] = field(default_factory=list)
    close_after: bool = True
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answers.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        writer.close()

    def url(self, path: str = "/rpc") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture
async def player() -> AsyncIterator[Player]:
    played = Player()
    server = await asyncio.start_server(played.serve, "127.0.0.1", 0)
    played.port = server.sockets[0].getsockname()[1]
    yield played
    server.close()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(kind: type[Client], limits: LimitSettings | None = None) -> Client:
        client = kind(EgressSettings(allow_loopback=True), limits or LimitSettings(),
                      RegistrySettings())  # fmt: skip
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


_KEPT = ("content-type", "a2a-version", "x-extra")


async def _outcome(client: Client, url: str, *, stream: bool, method: str = "POST") -> Outcome:
    """What a stage sees: status, relayed headers and body, or the broker error's reason."""
    try:
        response = await client.send(
            method, url, headers={"content-type": "application/json"},
            body=b'{"jsonrpc": "2.0"}' if method == "POST" else None, stream=stream,
        )  # fmt: skip
        try:
            if stream:
                body = b"".join([chunk async for chunk in response.chunks()])
            else:
                body = await response.read(1024)
        finally:
            response.close()
    except BrokerError as err:
        return ("error", err.reason)
    headers = {k: v for k in _KEPT if (v := response.headers.get(k)) is not None}
    return response.status, headers, body


_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
ANSWERS: dict[str, bytes] = {
    "content-length": _JSON + b'Content-Length: 11\r\n\r\n{"ok":true}',
    "chunked": _JSON + b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"ok\r\n7\r\n":true}\r\n0\r\n\r\n',
    "chunked-trailers": _JSON
    + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "chunk-extension": _JSON + b"Transfer-Encoding: chunked\r\n\r\n2;name=v\r\n{}\r\n0\r\n\r\n",
    "until-close": _JSON + b'Connection: close\r\n\r\n{"until": "close"}',
    "http10": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold server",
    "connection-close": _JSON + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}",
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "not-modified": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
    "continue-first": b"HTTP/1.1 100 Continue\r\n\r\n" + _JSON + b"Content-Length: 2\r\n\r\n{}",
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    + _JSON
    + b"Content-Length: 2\r\n\r\n{}",
    "error-status": b"HTTP/1.1 503 Busy\r\nContent-Type: text/html\r\n"
    b"Content-Length: 4\r\n\r\nbusy",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    "headers-kept": _JSON + b"A2A-Version: 1.0\r\nX-Extra: a b\r\nContent-Length: 2\r\n\r\n{}",
    "no-reason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
    "lf-only": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    "too-large": _JSON + b"Content-Length: 2048\r\n\r\n" + b"x" * 2048,
    "too-large-chunked": _JSON
    + b"Transfer-Encoding: chunked\r\n\r\n800\r\n"
    + b"x" * 2048
    + b"\r\n0\r\n\r\n",
    # what must fail, and fail alike
    "garbage": b"this is not http\r\n\r\n",
    "binary": bytes(range(256)),
    "bad-status": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    "bad-version": b"HTTP/9.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "truncated-length": _JSON + b'Content-Length: 100\r\n\r\n{"short',
    "truncated-chunked": _JSON + b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc",
    "bad-chunk-size": _JSON + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "truncated-headers": b"HTTP/1.1 200 OK\r\nContent-Ty",
    "bad-content-length": _JSON + b"Content-Length: ten\r\n\r\n{}",
    "silence-then-close": b"",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n",
}
# Where aiohttp is lenient in a way the lean client does not copy (the broker's error is the
# same kind of failure either way): name -> the lean client's outcome.
DIFFERENT: dict[str, Outcome] = {}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("name", list(ANSWERS))
async def test_both_transports_give_the_caller_the_same_answer(
    player: Player, clients: Callable[..., Client], name: str, stream: bool
) -> None:
    limits = LimitSettings(upstream_timeout_s=5, sse_idle_timeout_s=5)
    outcomes = []
    for kind in (AiohttpTransport, Http11Transport):
        player.answers = [ANSWERS[name]]
        outcomes.append(await _outcome(clients(kind, limits), player.url(), stream=stream))
    reference, lean = outcomes
    assert lean == DIFFERENT.get(name, reference), name
    first, second = player.requests[0], player.requests[1]
    assert _request_lines(first) == _request_lines(second)


def _request_lines(request: bytes) -> tuple[bytes, list[bytes], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    line, *headers = head.split(b"\r\n")
    return line, sorted(h.lower() for h in headers), body


async def test_a_kept_alive_connection_carries_the_next_request(
    player: Player, clients: Callable[..., Client]
) -> None:
    player.close_after = False
    player.answers = [ANSWERS["content-length"], ANSWERS["chunked"], ANSWERS["content-length"]]
    client = clients(Http11Transport)
    for _ in range(3):
        assert (await _outcome(client, player.url(), stream=False))[0] == 200
    assert player.connections == 1


async def test_a_connection_the_server_says_it_closes_is_not_reused(
    player: Player, clients: Callable[..., Client]
) -> None:
    player.close_after = False  # even when the server keeps it open after all
    player.answers = [ANSWERS["connection-close"], ANSWERS["content-length"]]
    client = clients(Http11Transport)
    for _ in range(2):
        outcome = await _outcome(client, player.url(), stream=False)
        assert outcome[0] == 200, outcome
    assert player.connections == 2


async def test_an_answer_left_unread_closes_its_connection(
    player: Player, clients: Callable[..., Client]
) -> None:
    player.close_after = False
    huge = _JSON + b"Content-Length: 4000000\r\n\r\n" + b"x" * 4_000_000
    player.answers = [huge, ANSWERS["content-length"]]
    client = clients(Http11Transport)
    assert await _outcome(client, player.url(), stream=False) == (
        "error", "UPSTREAM_RESPONSE_TOO_LARGE"
    )  # fmt: skip
    assert (await _outcome(client, player.url(), stream=False))[0] == 200
    assert player.connections == 2  # the rest of the big body never reads as the next answer


async def test_an_answer_nobody_asked_for_is_never_read_as_the_next_one(
    player: Player, clients: Callable[..., Client]
) -> None:
    player.close_after = False
    smuggled = _JSON + b"Content-Length: 9\r\n\r\n\"forged\"!"
    player.answers = [ANSWERS["content-length"] + smuggled, ANSWERS["chunked"]]
    client = clients(Http11Transport)
    assert (await _outcome(client, player.url(), stream=False))[2] == b'{"ok":true}'
    await asyncio.sleep(0.05)  # had the extra answer arrived apart, it is now
    assert (await _outcome(client, player.url(), stream=False))[2] == b'{"ok":true}'
    assert player.connections == 2


def _fake_getaddrinfo(*addresses: str) -> Callable[..., Awaitable[list[Any]]]:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return getaddrinfo


async def test_the_resolver_drops_refused_addresses_and_keeps_the_rest(
    player: Player, clients: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name rebound to the metadata service and to loopback: only loopback is connected to.
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo("169.254.169.254", "127.0.0.1"))
    player.answers = [ANSWERS["content-length"]]
    connects = ConnectLog()
    url = f"http://agent.test:{player.port}/"
    outcome = await _outcome(clients(Http11Transport), url, stream=False)
    assert outcome[0] == 200
    assert connects.addresses == [("127.0.0.1", player.port)]


async def test_the_resolver_refuses_when_every_address_is_refused(
    clients: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo("169.254.169.254"))
    connects = ConnectLog()
    with pytest.raises(EgressDeniedError, match="cloud metadata"):
        await clients(Http11Transport).send(
            "GET", "http://agent.test/", headers={}, body=None, stream=False
        )
    assert connects.addresses == []


# --- TLS ---------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
async def tls_player(tmp_path: Path) -> AsyncIterator[tuple[Player, Path]]:
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    played = Player()
    server = await asyncio.start_server(played.serve, "127.0.0.1", 0, ssl=context)
    played.port = server.sockets[0].getsockname()[1]
    yield played, cert_file
    server.close()


async def test_an_untrusted_certificate_is_refused_like_aiohttp_does(
    tls_player: tuple[Player, Path], clients: Callable[..., Client]
) -> None:
    player, _ = tls_player
    url = f"https://127.0.0.1:{player.port}/rpc"
    for kind in (AiohttpTransport, Http11Transport):
        player.answers = [ANSWERS["content-length"]]
        assert await _outcome(clients(kind), url, stream=False) == (
            "error", "UPSTREAM_UNREACHABLE"
        )  # fmt: skip
    assert player.requests == []


async def test_https_to_a_trusted_upstream(
    tls_player: tuple[Player, Path],
    clients: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    player, cert_file = tls_player
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # the default context's trust store
    player.close_after = False
    player.answers = [ANSWERS["content-length"], ANSWERS["chunked"]]
    client = clients(Http11Transport)
    url = f"https://127.0.0.1:{player.port}/rpc"
    assert await _outcome(client, url, stream=False) == (
        200, {"content-type": "application/json"}, b'{"ok":true}'
    )  # fmt: skip
    assert (await _outcome(client, url, stream=True))[2] == b'{"ok":true}'
    assert player.connections == 1
    assert player.requests[0].startswith(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_the_socket_guard_catches_what_skips_the_url_check(player: Player) -> None:
    # Straight to the connector, around the URL check: the guard still sees the address.
    connector = Connector(EgressPolicy(EgressSettings(allow_loopback=False)), tls_context())
    connects = ConnectLog()
    with pytest.raises(EgressRefusedOSError) as refused:
        await connector.open(("http", "127.0.0.1", player.port), literal=True)
    assert isinstance(transport_error(refused.value), EgressDeniedError)
    assert connects.addresses == []
    assert player.connections == 0

"""A connection the broker turns away must be able to read why.

Closing a socket whose received bytes were never read makes the kernel send a reset instead of
a FIN, and a client that gets the reset may lose the answer written just before it: the 503
``CONNECTION_LIMIT`` of a refused connection that cannot linger. So before such a close the
broker discards what the client has already sent. Real sockets on the loopback and uvloop, as
the broker serves; the client's bytes are in the kernel before the broker accepts it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from broker.errors import ConnectionLimitError
from broker.http import connections
from broker.http.connections import BoundedHttpToolsProtocol, ConnectionBounds
from testkit.raw_http import error_reason

# One connection at a time: a second is refused while the first is busy.
BOUNDS = ConnectionBounds(
    header_timeout_s=10.0, body_timeout_s=10.0, idle_timeout_s=10.0, max_connections=1
)
HEAD = (
    b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 9000\r\n\r\n"
)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass


async def _start() -> tuple[asyncio.Server, int]:
    """A server of the broker's connection protocol, held to ``BOUNDS``; its port."""
    loop = asyncio.get_running_loop()
    state = ServerState()
    config = Config(_app, log_config=None, access_log=False)
    config.load()
    server = await loop.create_server(
        lambda: BoundedHttpToolsProtocol(
            config=config, server_state=state, app_state={}, _loop=loop, bounds=BOUNDS
        ),
        "127.0.0.1",
        0,
    )
    return server, server.sockets[0].getsockname()[1]


def _sent(port: int, data: bytes) -> socket.socket:
    """A client that has connected and written ``data`` (into the broker's kernel buffer,
    before the broker's loop has accepted it)."""
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(data)
    client.setblocking(False)
    return client


async def _answer(client: socket.socket, within_s: float = 5.0) -> bytes:
    """Everything the broker wrote before it closed; raises on a reset."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(within_s):
        while chunk := await loop.sock_recv(client, 65536):
            received += chunk
    return received


def test_a_refusal_that_cannot_linger_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every open connection is busy and no refusal may linger: the new one is closed at once,
    after the 503, and the client reads the 503, not a reset."""
    monkeypatch.setattr(connections, "MAX_LINGERING", 0)

    async def scenario() -> bytes:
        server, port = await _start()
        busy = _sent(port, HEAD + b"{")  # headers whole, body withheld: busy, not waiting
        await asyncio.sleep(0.2)
        refused = _sent(port, HEAD + b"x" * 4000)
        try:
            return await _answer(refused)
        finally:
            refused.close()
            busy.close()
            server.close()

    answer = uvloop.run(scenario())
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert error_reason(answer) == ConnectionLimitError.reason

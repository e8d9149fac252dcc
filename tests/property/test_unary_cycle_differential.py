"""A unary answer sent whole (``broker.http.one_write.send_whole``) puts on the wire exactly
what uvicorn's ``send`` puts there for the same answer as two ASGI messages: the status line,
the headers, the body, ``connection: close`` and the close itself, the next kept-alive or
pipelined request's answer, and what an answer ``send`` refuses leaves behind (decision 0098).

Both run through the broker's own protocol (``BoundedHttpToolsProtocol``) over a transport that
keeps what is written, so everything a client could see is compared.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from broker.errors import TaskNotFoundError, UnauthenticatedError, UpstreamPoolExhaustedError
from broker.http.connections import BoundedHttpToolsProtocol, ConnectionBounds
from broker.http.mediation import MediationEdges
from broker.http.one_write import Headers, sent_whole
from broker.types import Reply

BOUNDS = ConnectionBounds(
    header_timeout_s=10.0, body_timeout_s=30.0, idle_timeout_s=5.0, max_connections=8
)
DEFAULTS = [(b"date", b"Sun, 06 Dec 2026 20:00:00 GMT"), (b"server", b"uvicorn")]


class Wire:
    """A connection's transport that keeps what is written while it is open."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0
        self.closed = False
        self.closed_by_server = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writes += 1
            self.data += data

    def writelines(self, pieces: Any) -> None:
        self.write(b"".join(pieces))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _exchange(app: Any, request: bytes, defaults: Headers) -> Wire:
    """Feed ``request`` to a new connection served by ``app``; what it wrote once all is done."""
    state = ServerState()
    state.default_headers = defaults
    config = Config(app, log_config=None, access_log=False)
    config.load()
    conn = BoundedHttpToolsProtocol(
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop(),
        bounds=BOUNDS,
    )  # fmt: skip
    wire = Wire()
    conn.connection_made(wire)  # type: ignore[arg-type]
    conn.data_received(request)
    while state.tasks:
        await asyncio.wait(list(state.tasks))
        await asyncio.sleep(0)  # a pipelined request's task starts from the last one's answer
    await asyncio.sleep(0)  # the end-of-turn flush of a held head
    wire.closed_by_server = wire.closed
    conn.connection_lost(None)  # the client goes: no timer left behind
    return wire


def _replying(status: int, headers: Headers, body: bytes, *, whole: bool) -> Any:
    """An app that reads the request and answers it whole (if it can) or as two messages."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        if whole and sent_whole(send, status, list(headers), body):
            return
        length = (b"content-length", str(len(body)).encode())
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, length]})  # fmt: skip
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


def _request(method: str, version: str, extra: list[str], body: bytes) -> bytes:
    lines = [f"{method} /agents/a/jsonrpc HTTP/{version}", "host: b", *extra]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _both(
    status: int, headers: Headers, body: bytes, request: bytes, defaults: Headers
) -> tuple[Wire, Wire]:
    generic = await _exchange(_replying(status, headers, body, whole=False), request, defaults)
    whole = await _exchange(_replying(status, headers, body, whole=True), request, defaults)
    return generic, whole


def _same(generic: Wire, whole: Wire) -> None:
    assert bytes(whole.data) == bytes(generic.data)
    assert whole.closed_by_server == generic.closed_by_server


NAME = st.one_of(
    st.sampled_from([b"a2a-version", b"x-request-id", b"retry-after", b"content-length",
                     b"transfer-encoding", b"connection", b"Content-Type", b"bad name", b"a:b",
                     b""]),
    st.binary(max_size=12),
)  # fmt: skip
VALUE = st.one_of(
    st.sampled_from([b"1.0", b"close", b"chunked", b"keep-alive, Close", b"7", b"a\tb",
                     b"a\r\nx-evil: 1", b"\xff", b"v "]),
    st.binary(max_size=12),
)  # fmt: skip
REQUEST_LINE = st.tuples(
    st.sampled_from(["POST", "GET", "DELETE", "HEAD"]),
    st.sampled_from(["1.1", "1.0"]),
    st.lists(st.sampled_from(["connection: close", "connection: keep-alive",
                              "expect: 100-continue", "a2a-version: 1.0"]), max_size=2),
    st.sampled_from([b"", b"{}", b'{"jsonrpc":"2.0"}']),
    st.booleans(),  # a second request pipelined behind the first
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 304, 400, 401, 404, 413, 429, 500, 503, 599, 600]),
    headers=st.lists(st.tuples(NAME, VALUE), max_size=4),
    body=st.one_of(st.binary(max_size=64), st.just(b"x" * (70 * 1024))),
    request=REQUEST_LINE,
    defaults=st.sampled_from([DEFAULTS, [], [(b"server", b"a b\x01")], [(b"Server", b"x")],
                              [(b"connection", b"close")]]),
)  # fmt: skip
def test_an_answer_sent_whole_is_on_the_wire_as_its_two_messages_put_it(
    status: int,
    headers: Headers,
    body: bytes,
    request: tuple[str, str, list[str], bytes, bool],
    defaults: Headers,
) -> None:
    method, version, extra, request_body, pipelined = request
    one = _request(method, version, extra, request_body)
    generic, whole = asyncio.run(_both(status, headers, body, one * (1 + pipelined), defaults))
    _same(generic, whole)


async def test_an_ordinary_answer_takes_the_whole_path_in_one_write() -> None:
    taken: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        taken.append(sent_whole(send, 200, [(b"a2a-version", b"1.0")], b"{}"))

    request = _request("POST", "1.1", [], b"{}")
    wire = await _exchange(app, request * 2, DEFAULTS)
    assert taken == [True, True]
    assert wire.writes == 2 and not wire.closed_by_server
    assert bytes(wire.data) == 2 * (
        b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 20:00:00 GMT\r\nserver: uvicorn\r\n"
        b"a2a-version: 1.0\r\ncontent-length: 2\r\n\r\n{}"
    )


class _Runtime:
    def __init__(self, answer: Reply | BaseException) -> None:
        self.answer = answer

    async def mediate(self, ctx: Any) -> Reply:
        await ctx.read_body()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def _edges(answer: Reply | BaseException) -> MediationEdges:
    async def litestar(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a mediation path must not reach Litestar")

    app: Any = litestar
    app.state = SimpleNamespace(runtime=_Runtime(answer))
    return MediationEdges(app, 4096)


def _hidden(edges: MediationEdges) -> Any:
    """The same edge with uvicorn's ``send`` behind a plain function: the two-message path."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def plain(message: Any) -> None:
            await send(message)

        await edges(scope, receive, plain)

    return app


async def test_the_mediation_edge_s_answers_and_refusals_are_those_of_the_two_messages() -> None:
    answers: list[Reply | BaseException] = [
        Reply(200, b'{"jsonrpc":"2.0","id":1,"result":{}}', headers={"A2A-Version": "1.0"}),
        Reply(200, b"text", "text/plain"),
        TaskNotFoundError(),
        UnauthenticatedError(),
        UpstreamPoolExhaustedError(retry_after=3.2),
        RuntimeError("boom"),
    ]
    rest = b"GET /agents/a/rest/tasks/t1?x=1 HTTP/1.1\r\nhost: b\r\n\r\n"
    for answer in answers:
        for request in (_request("POST", "1.1", [], b"{}"), _request("POST", "1.0", [], b"{}"),
                        rest):  # fmt: skip
            generic = await _exchange(_hidden(_edges(answer)), request, DEFAULTS)
            whole = await _exchange(_edges(answer), request, DEFAULTS)
            _same(generic, whole)
            assert whole.writes == 1
    unexpected = json.loads(bytes(whole.data).partition(b"\r\n\r\n")[2])
    assert unexpected["error"]["status"] == "INTERNAL" and "boom" not in str(unexpected)

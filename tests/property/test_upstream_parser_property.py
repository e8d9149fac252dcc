"""The lean client's answer parser never crashes, never hangs, and reads valid answers exactly.

Bytes are fed to ``UpstreamConnection`` as the event loop would (in arbitrary pieces, then the
end of the stream) over a stand-in for the socket transport; whatever arrives, the caller gets
an answer or one of the two failures the error table reads as UPSTREAM_BAD_RESPONSE or
UPSTREAM_UNREACHABLE.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import UpstreamBadResponseError, UpstreamUnreachableError
from broker.outbound.connection import UpstreamConnection
from broker.outbound.errors import MalformedResponseError, UpstreamClosedError, transport_error

_FAILURES = (UpstreamBadResponseError, UpstreamUnreachableError)
_LOOP = asyncio.new_event_loop()  # one for the module: an example is a few callbacks long


class _Socket:
    """Stands in for asyncio's socket transport: what the connection writes goes nowhere."""

    def __init__(self) -> None:
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


Read = tuple[int, dict[str, str], bytes] | BaseException


async def _play(pieces: list[bytes], *, eof: bool = True) -> Read:
    conn = UpstreamConnection()
    conn.connection_made(cast("Any", _Socket()))
    conn.start(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for piece in pieces:
        conn.data_received(piece)  # must never raise
    if eof:
        conn.eof_received()
        conn.connection_lost(None)
    try:
        await asyncio.wait_for(conn.headers_arrived(), 1)
        body = b""
        while chunk := await asyncio.wait_for(conn.next_chunk(), 1):
            body += chunk
    except (MalformedResponseError, UpstreamClosedError) as exc:
        return exc
    return conn.status, conn.headers, body


def play(pieces: list[bytes], *, eof: bool = True) -> Read:
    return _LOOP.run_until_complete(_play(pieces, eof=eof))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=6))
def test_any_bytes_end_in_an_answer_or_a_bad_response(data: bytes, cuts: list[int]) -> None:
    read = play(_split(data, cuts))
    if isinstance(read, BaseException):
        assert isinstance(
            transport_error(read), UpstreamBadResponseError | UpstreamUnreachableError
        )
    else:
        assert len(read[2]) <= len(data)


_TOKENS = st.text(alphabet="abcXYZ-_0123456789", min_size=1, max_size=8)
_VALUES = st.text(alphabet="abc ;=,/0123456789\t", max_size=12)
headers = st.lists(st.tuples(_TOKENS, _VALUES), max_size=5)
bodies = st.binary(max_size=300)
statuses = st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304))


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        piece, rest = rest[: max(size, 1)], rest[max(size, 1) :]
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
    if rest:
        out += b"%x\r\n%s\r\n" % (len(rest), rest)
    return out + b"0\r\n\r\n"


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, int, bytes, bool]:
    """A valid answer: its bytes, status, body and whether it is kept alive."""
    status, body = draw(statuses), draw(bodies)
    extra = [(n, v.strip()) for n, v in draw(headers)
             if n.lower() not in ("content-length", "transfer-encoding", "connection")]  # fmt: skip
    head = b"HTTP/1.1 %d X\r\n" % status
    head += b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in extra)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "length":
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        sizes = draw(st.lists(st.integers(min_value=1, max_value=64), max_size=6))
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, sizes)
    else:
        data = head + b"Connection: close\r\n\r\n" + body
    return data, status, body, framing != "close"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.lists(st.integers(min_value=0), max_size=8))
def test_a_valid_answer_in_any_pieces_reads_exactly(
    answer: tuple[bytes, int, bytes, bool], cuts: list[int]
) -> None:
    data, status, body, kept_alive = answer
    read = play(_split(data, cuts), eof=not kept_alive)
    assert not isinstance(read, BaseException), read
    assert read[0] == status and read[2] == body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answers(),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(min_value=0),
)
def test_a_damaged_answer_never_crashes(
    answer: tuple[bytes, int, bytes, bool], flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(answer[0])
    for position, value in flips:
        data[position % len(data)] = value
    damaged = bytes(data[: cut % (len(data) + 1)])
    read = play([damaged])
    if isinstance(read, BaseException):
        assert isinstance(
            transport_error(read), UpstreamBadResponseError | UpstreamUnreachableError
        )

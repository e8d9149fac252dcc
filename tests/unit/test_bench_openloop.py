"""The open-loop load generator's pure parts, and one short run against a loopback server."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import pytest

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.http1 import MalformedResponseError, Response, ResponseParser
from benchmarks.openloop import Plan, arrivals, percentile, run

# -- percentiles -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0


def test_percentile_of_few_values_never_interpolates() -> None:
    assert percentile([1.0, 2.0, 30.0], 50) == 2.0
    assert percentile([1.0, 2.0, 30.0], 99) == 30.0
    assert percentile([7.0], 0.1) == 7.0
    assert percentile([], 99) == 0.0


# -- arrival schedule --------------------------------------------------------------------------


def test_uniform_arrivals_are_evenly_spaced_in_the_window() -> None:
    times = list(arrivals(100, 2.0))
    assert len(times) == 200
    assert times[0] == 0.0
    assert times[-1] < 2.0
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {0.01}


def test_uniform_arrivals_at_a_fractional_rate() -> None:
    assert list(arrivals(2.5, 1.0)) == [0.0, 0.4, 0.8]
    assert list(arrivals(0, 5.0)) == []


def test_poisson_arrivals_hold_the_mean_rate_and_are_reproducible() -> None:
    times = list(arrivals(1000, 10.0, "poisson", seed=7))
    assert abs(len(times) - 10_000) < 400  # ~4 standard deviations
    assert times == sorted(times)
    assert all(0 < t < 10.0 for t in times)
    assert times == list(arrivals(1000, 10.0, "poisson", seed=7))
    assert times != list(arrivals(1000, 10.0, "poisson", seed=8))


def test_unknown_arrivals_are_refused() -> None:
    with pytest.raises(ValueError, match="arrivals"):
        list(arrivals(10, 1.0, "bursty"))


# -- response parsing --------------------------------------------------------------------------


def _feed_bytewise(parser: ResponseParser, data: bytes) -> list[Response]:
    out = []
    for n in range(len(data)):
        out += parser.feed(data[n : n + 1])
    return out


CONTENT_LENGTH = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello"
)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
)


def test_content_length_response_whole_and_byte_by_byte() -> None:
    assert ResponseParser().feed(CONTENT_LENGTH) == [Response(200, b"hello", False)]
    assert _feed_bytewise(ResponseParser(), CONTENT_LENGTH) == [Response(200, b"hello", False)]


def test_chunked_response_whole_and_byte_by_byte() -> None:
    assert ResponseParser().feed(CHUNKED) == [Response(200, b"hello, world", False)]
    assert _feed_bytewise(ResponseParser(), CHUNKED) == [Response(200, b"hello, world", False)]


def test_chunked_response_with_trailers() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    assert _feed_bytewise(ResponseParser(), data) == [Response(200, b"abc", False)]


def test_responses_back_to_back_in_one_read() -> None:
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    got = ResponseParser().feed(CHUNKED + CONTENT_LENGTH + not_found)
    assert got == [
        Response(200, b"hello, world", False),
        Response(200, b"hello", False),
        Response(404, b"", True),
    ]


def test_interim_and_bodyless_responses() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    assert ResponseParser().feed(data) == [Response(204, b"", False)]


def test_body_until_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\npartial ") == []
    assert parser.feed(b"body") == []
    assert parser.feed_eof() == Response(200, b"partial body", True)
    assert ResponseParser().feed_eof() is None


@pytest.mark.parametrize(
    "data",
    [b"SMTP ready\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"],
)
def test_malformed_heads_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        ResponseParser().feed(data)


def test_bad_chunk_size_is_refused() -> None:
    with pytest.raises(MalformedResponseError):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


# -- one short run against a loopback server ---------------------------------------------------


class _Server:
    """A keep-alive HTTP/1.1 server on 127.0.0.1: 200 (chunked) for /ok, 500 for anything else."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if head.startswith(b"POST /ok "):
                    writer.write(CHUNKED)
                else:
                    writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> _Server:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def server() -> Iterator[_Server]:
    with _Server() as srv:
        yield srv


def test_a_short_run_sends_at_the_rate_and_counts_only_the_window(server: _Server) -> None:
    plan = Plan(f"http://127.0.0.1:{server.port}/ok", rate=200, seconds=0.5, warmup=0.2)
    marks: list[str] = []
    result = run(plan, marks.append)
    assert marks == ["start", "end"]
    assert result.count == 100
    assert server.requests == 140  # the warm-up is sent too, not counted
    assert result.errors == result.timeouts == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms < 1000
    assert 1 <= result.connections <= 256


def test_non_2xx_and_refused_connections_are_errors(server: _Server) -> None:
    failing = run(Plan(f"http://127.0.0.1:{server.port}/fail", 100, 0.3, warmup=0.0))
    assert failing.count == failing.errors == 30
    assert failing.timeouts == 0
    server.__exit__()  # nothing listens on the port any more
    refused = run(Plan(f"http://127.0.0.1:{server.port}/ok", 100, 0.3, warmup=0.0))
    assert refused.count == refused.errors == 30

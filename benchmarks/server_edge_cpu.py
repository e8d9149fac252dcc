"""What the HTTP/1.1 server edge costs a mediated request, in process, over loopback.

    .venv/bin/python -m benchmarks.server_edge_cpu [--requests N] [--rounds R] [--concurrency C]
    .venv/bin/python -m benchmarks.server_edge_cpu --sends [--requests N] [--rounds R]

The broker's own server side of a request: ``BoundedHttpToolsProtocol`` (uvicorn's httptools
protocol with the connection bounds) parsing the request and writing the answer, and the raw
mediation edge (``MediationEdges``) in front of a runtime that reads the body and answers a
fixed unary reply at once (``benchmarks.edge_costs``'s). C kept-alive clients on the same
uvloop send ``POST /agents/bench/jsonrpc`` one after another; the figure is the loop thread's
CPU µs per request (``time.thread_time``), clients included (they cost the same whatever the
server does), each round's and the median of R rounds. No network leaves the process.

``--sends`` times only the answer's way out, in alternated rounds: a new response cycle (as the
protocol makes one a request) over a transport that drops what it is given, then the mediation
edge's reply sent as uvicorn's two ASGI messages (``messages``: ``send`` twice), or ``whole``
(``broker.http.one_write.send_whole``, decision 0098), or not at all (the cycle ``alone``);
``--only`` runs one of them (for callgrind).

Under callgrind, two runs of different ``--requests`` (one round each) give the instructions of
one request as the difference of their totals over the difference of their lengths.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from email.utils import formatdate
from typing import Any

import msgspec
import uvloop
from litestar import Litestar
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from benchmarks.edge_costs import ANSWER, BODY, HEADERS, _Runtime
from benchmarks.http1 import ResponseParser
from broker.http import mediation
from broker.http.connections import ConnectionBounds, protocol_factory
from broker.http.one_write import HeadWithBody, sent_whole

REQUEST = b"".join(
    [b"POST /agents/bench/jsonrpc HTTP/1.1\r\n",
     *(name + b": " + value + b"\r\n" for name, value in HEADERS), b"\r\n", BODY]
)  # fmt: skip
BOUNDS = ConnectionBounds(
    header_timeout_s=10.0, body_timeout_s=30.0, idle_timeout_s=5.0, max_connections=1024
)


def _server_state(config: Config) -> ServerState:
    """What ``uvicorn.Server`` keeps for its connections, with the headers it adds each second."""
    state = ServerState()
    state.default_headers = [
        (b"date", formatdate(time.time(), usegmt=True).encode()),
        *config.encoded_headers,
    ]
    return state


class _Client(asyncio.Protocol):
    """One kept-alive connection: sends the next request when the previous answer is whole."""

    def __init__(self, left: int, done: asyncio.Future[None]) -> None:
        self._left = left
        self._done = done
        self._parser = ResponseParser()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        for response in self._parser.feed(data):
            if response.status != 200:
                self._done.set_exception(RuntimeError(f"status {response.status}"))
                return
            self._left -= 1
            if self._left == 0:
                self._done.set_result(None)
                return
            assert self._transport is not None
            self._transport.write(REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("closed"))


async def _round(port: int, requests: int, concurrency: int) -> float:
    """CPU µs per request of ``requests`` spread over ``concurrency`` new connections."""
    loop = asyncio.get_running_loop()
    each = requests // concurrency
    done = [loop.create_future() for _ in range(concurrency)]
    started = time.thread_time()
    transports = [
        (await loop.create_connection(lambda d=d: _Client(each, d), "127.0.0.1", port))[0]
        for d in done
    ]
    await asyncio.gather(*done)
    took = time.thread_time() - started
    for transport in transports:
        transport.close()
    return took / (each * concurrency) * 1e6


async def main(requests: int, rounds: int, concurrency: int) -> None:
    app = Litestar(openapi_config=None, logging_config=None)
    app.state.runtime = _Runtime()
    edges = mediation.MediationEdges(app, 1 << 20)
    # as ``a2a-broker serve`` configures uvicorn (decision 0100: no X-Forwarded-* rewrite)
    config = Config(edges, access_log=False, log_config=None, proxy_headers=False)
    config.load()
    state = _server_state(config)
    factory = protocol_factory(BOUNDS)
    server = await asyncio.get_running_loop().create_server(
        lambda: factory(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    await _round(port, 20 * concurrency, concurrency)  # warm-up, the same for any length
    took = [await _round(port, requests, concurrency) for _ in range(rounds)]
    server.close()
    spread = ", ".join(f"{value:.1f}" for value in took)
    print(f"server edge, c={concurrency}: {statistics.median(took):.1f} µs/request ({spread})")


class _Drop:
    """A transport that takes every write and drops it."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def sends(number: int, rounds: int, only: str | None) -> None:
    loop = asyncio.get_running_loop()
    drop = _Drop()
    flow = FlowControl(drop)  # type: ignore[arg-type]
    logger = logging.getLogger("uvicorn.error")
    state = _server_state(Config(lambda: None))
    reply = msgspec.structs.replace(ANSWER, headers={**ANSWER.headers, "x-request-id": "r" * 32})

    def cycle() -> RequestResponseCycle:
        return RequestResponseCycle(
            scope={"method": "POST"},  # type: ignore[typeddict-item]
            transport=HeadWithBody(drop, loop),  # type: ignore[arg-type]
            flow=flow, logger=logger, access_logger=logger, access_log=False,
            default_headers=state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=False, keep_alive=True, on_response=lambda: None,
        )  # fmt: skip

    async def messages() -> None:
        start, body = mediation.reply_messages(reply)
        made = cycle()
        await made.send(start)
        await made.send(body)

    async def whole() -> None:
        status, headers = mediation.reply_head(reply)
        if not sent_whole(cycle().send, status, headers, reply.body):
            raise AssertionError("not sent whole")

    async def alone() -> None:
        cycle()

    runs = {"alone": alone, "messages": messages, "whole": whole}
    runs = {name: run for name, run in runs.items() if only in (None, name)}
    took: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.thread_time()
            for _ in range(number):
                await run()
            await asyncio.sleep(0)  # held heads' end-of-turn flushes run in the round
            took[name].append((time.thread_time() - started) / number * 1e6)
    for name, values in took.items():
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:<8} {statistics.median(values):5.1f} µs  ({spread})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sends", action="store_true", help="time only the answer's way out")
    parser.add_argument("--only", choices=["alone", "messages", "whole"], help="with --sends")
    args = parser.parse_args()
    if args.sends:
        uvloop.run(sends(args.requests, args.rounds, args.only))
    else:
        uvloop.run(main(args.requests, args.rounds, args.concurrency))

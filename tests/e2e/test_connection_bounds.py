"""Connections have bounded lives (issue 12, decision 0024).

A broker under ``ulimit -n 1024`` (set on its process, as an operator's would be) with short
timeouts. 1,100 silent sockets and 300 slow-loris clients (headers at a byte a second) are opened
against it at once: normal A2A requests, each on a new connection, keep succeeding throughout,
and every flooding socket is closed within the header timeout. Then every connection the broker
accepts is made busy (headers sent, body withheld): a new connection is refused at once with
503 CONNECTION_LIMIT, the busy ones end at the body timeout, and the log says what was shed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from broker.errors import ConnectionLimitError, RequestBodyTimeoutError, RequestHeaderTimeoutError
from broker.http.connections import FD_RESERVE
from testkit.brokers import start_broker
from testkit.config import BrokerConfig
from testkit.procs import Process, free_port, local_url
from testkit.raw_http import error_reason

from .conftest import Upstream, _static_card
from .wire import A2A_V1, jsonrpc_request, user_message

OPEN_FILES = 1024
POOL = 64  # [limits] upstream_pool_size
CAP = OPEN_FILES - POOL - FD_RESERVE  # what the broker lowers max_connections to
HEADER_S, BODY_S, IDLE_S = 2.0, 2.0, 1.0
SLACK_S = 1.5  # timers fire on a loop busy with 1,400 sockets
SILENT, SLOW_LORIS = 1100, 300


@dataclass(frozen=True)
class BoundedBroker:
    url: str
    port: int
    caller_headers: dict[str, str]
    process: Process


@pytest.fixture(scope="module")
def bounded(
    upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BoundedBroker]:
    folder = tmp_path_factory.mktemp("bounded")
    port = free_port()
    config = BrokerConfig(port=port).set(
        "server", header_timeout_s=HEADER_S, body_timeout_s=BODY_S, idle_timeout_s=IDLE_S
    )
    config.set("limits", upstream_pool_size=POOL).set("audit", fsync=False)
    with start_broker(
        config, log_dir=folder, name="bounded-broker", open_files=OPEN_FILES
    ) as broker:
        broker.register("echo", _static_card("echo", upstreams["echo"].url))
        credential = broker.register("carol", _static_card("carol", local_url(port)))
        headers = {"Authorization": f"Bearer {credential}"}
        yield BoundedBroker(broker.url, port, headers, broker.process)


@pytest.fixture(scope="module", autouse=True)
def enough_files_here() -> Iterator[None]:
    """This test process holds every flooding socket itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def normal_request(broker: BoundedBroker) -> httpx.Response:
    """SendMessage to the echo agent on a connection of its own."""
    body = jsonrpc_request("SendMessage", {"message": user_message("still here?")})
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(trust_env=False, timeout=10, limits=limits) as http:
        return await http.post(f"{broker.url}/agents/echo/jsonrpc", json=body,
                               headers={**A2A_V1, **broker.caller_headers})  # fmt: skip


async def held_open(port: int, first_bytes: bytes, drip: bytes = b"") -> tuple[float, bytes]:
    """Open a connection, send ``first_bytes``, then ``drip`` a byte a second; how long the
    broker kept it open and what it said before closing it."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        if first_bytes:
            writer.write(first_bytes)
        reading = asyncio.create_task(reader.read())
        for byte in drip:
            done, _ = await asyncio.wait([reading], timeout=1.0)
            if done:
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
        with contextlib.suppress(ConnectionError):
            answer = await asyncio.wait_for(reading, timeout=30)
    finally:
        writer.close()
    return time.monotonic() - opened, answer


async def keep_asking(broker: BoundedBroker, until: asyncio.Event) -> list[int]:
    statuses = []
    while not until.is_set():
        response = await normal_request(broker)
        assert "result" in response.json(), response.text
        statuses.append(response.status_code)
        # Paced so that at least 10 answers fit in the ~2-3.5 s the floods last even when this
        # loop (which also holds the 1,400 flooding sockets) is slow; at 0.1 s a busy machine
        # got only 5-9 of them in, every one a 200.
        await asyncio.sleep(0.03)
    return statuses


async def test_silent_and_slow_loris_floods_are_reaped_while_normal_requests_succeed(
    bounded: BoundedBroker,
) -> None:
    head = b"POST /agents/echo/jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    done = asyncio.Event()
    asker = asyncio.create_task(keep_asking(bounded, done))
    floods = [held_open(bounded.port, b"") for _ in range(SILENT)]
    floods += [held_open(bounded.port, head[:1], head[1:]) for _ in range(SLOW_LORIS)]
    results = await asyncio.gather(*floods)
    done.set()
    statuses = await asker

    assert len(statuses) >= 10 and set(statuses) == {200}
    held = [seconds for seconds, _ in results]
    assert max(held) < HEADER_S + SLACK_S, sorted(held)[-5:]
    said = {error_reason(answer) for _, answer in results if answer}
    assert said <= {RequestHeaderTimeoutError.reason, ConnectionLimitError.reason}, said
    assert RequestHeaderTimeoutError.reason in said
    assert (await normal_request(bounded)).status_code == 200
    await asyncio.sleep(1.5)  # the report of the last second is written
    log = bounded.process.log.read_text()
    assert f"max_connections 4096 lowered to {CAP}" in log
    shed = re.findall(r"(\d+) waiting ones closed to make room, (\d+) header timeouts", log)
    assert sum(int(s) for s, _ in shed) > 0 and sum(int(t) for _, t in shed) > 0, shed


async def test_over_the_cap_a_new_connection_is_refused_at_once_and_the_log_says_so(
    bounded: BoundedBroker,
) -> None:
    head = (
        f"POST /agents/echo/jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"A2A-Version: 1.0\r\nAuthorization: {bounded.caller_headers['Authorization']}\r\n"
        "Content-Length: 1000\r\n\r\n{"
    ).encode()
    busy = [asyncio.create_task(held_open(bounded.port, head)) for _ in range(CAP + 50)]
    await asyncio.sleep(0.5 * BODY_S)  # every one has sent its headers and waits in its body

    started = time.monotonic()
    refused = await asyncio.gather(*(held_open(bounded.port, b"") for _ in range(5)))
    for _, answer in refused:
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"\r\nretry-after: 1\r\n" in answer.lower()
        assert error_reason(answer) == ConnectionLimitError.reason
    assert time.monotonic() - started < 0.5 * BODY_S  # at once, not after anyone's timeout
    over = await normal_request(bounded)
    assert over.status_code == 503
    assert over.json()["error"]["details"][0]["reason"] == ConnectionLimitError.reason

    ended = await asyncio.gather(*busy)
    reasons = [error_reason(answer) for _, answer in ended]
    assert reasons.count(RequestBodyTimeoutError.reason) >= CAP - 5, set(reasons)
    assert set(reasons) <= {RequestBodyTimeoutError.reason, ConnectionLimitError.reason}
    assert max(seconds for seconds, _ in ended) < BODY_S + SLACK_S + 0.5 * BODY_S
    assert (await normal_request(bounded)).status_code == 200
    await asyncio.sleep(1.5)
    refusals = re.findall(r"in the last second (\d+) refused", bounded.process.log.read_text())
    assert sum(int(n) for n in refusals) >= 6, refusals


def _raw_send_message(broker: BoundedBroker, text: str) -> bytes:
    """A whole kept-alive HTTP/1.1 SendMessage request, as a client writes it."""
    body = json.dumps(jsonrpc_request("SendMessage", {"message": user_message(text)})).encode()
    head = (
        f"POST /agents/echo/jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"A2A-Version: 1.0\r\nAuthorization: {broker.caller_headers['Authorization']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, Any]]:
    """One HTTP/1.1 answer with a Content-Length: its status line and its JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = int(re.search(rb"(?i)\r\ncontent-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
    return head.split(b"\r\n", 1)[0], json.loads(body)


async def test_a_kept_alive_connection_in_use_stays_open_and_closes_when_idle(
    bounded: BoundedBroker,
) -> None:
    """Requests on one connection, spaced under the idle timeout, for longer than the header,
    body and idle timeouts together: every one is answered on that connection. Then, idle, it
    is closed after the idle timeout (not much sooner, not much later)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    try:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < HEADER_S + BODY_S + IDLE_S + 0.5:
            writer.write(_raw_send_message(bounded, f"still here {answered}?"))
            status, answer = await _read_answer(reader)
            assert status == b"HTTP/1.1 200 OK" and "result" in answer, (status, answer)
            answered += 1
            await asyncio.sleep(0.6 * IDLE_S)
        idle_from = time.monotonic() - 0.6 * IDLE_S  # when the last answer came back
        assert await asyncio.wait_for(reader.read(), timeout=IDLE_S + SLACK_S + 5) == b""
        idle = time.monotonic() - idle_from
        assert answered >= 8
        assert 0.8 * IDLE_S <= idle < IDLE_S + SLACK_S, idle
    finally:
        writer.close()


async def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline(
    bounded: BoundedBroker,
) -> None:
    """After one answered request, the next request's headers dripped a byte at a time are cut
    off with 408 REQUEST_HEADER_TIMEOUT, the header timeout after its first byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    try:
        writer.write(_raw_send_message(bounded, "first"))
        status, _ = await _read_answer(reader)
        assert status == b"HTTP/1.1 200 OK"
        await asyncio.sleep(0.5 * IDLE_S)
        slow = _raw_send_message(bounded, "second")
        first_byte = time.monotonic()
        reading = asyncio.create_task(reader.read())
        for byte in slow[: int(HEADER_S + SLACK_S + 3)]:
            writer.write(bytes([byte]))
            done, _ = await asyncio.wait([reading], timeout=1.0)
            if done:
                break
        answer = await asyncio.wait_for(reading, timeout=HEADER_S + SLACK_S)
        held = time.monotonic() - first_byte
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert error_reason(answer) == RequestHeaderTimeoutError.reason
        assert 0.9 * HEADER_S <= held < HEADER_S + SLACK_S, held
    finally:
        writer.close()

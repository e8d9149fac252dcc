"""SIEM sinks against real receivers on 127.0.0.1: an RFC 5424/6587 TCP syslog server and an
HEC-compatible HTTP server. Both receivers are reused by test_siem_exporter.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from broker.audit.export import (
    ExportItem,
    HecSink,
    JsonLinesSink,
    SinkUnavailableError,
    SyslogSink,
    export_item,
)
from broker.audit.export.syslog import format_frame, sd_escape
from broker.audit.records import AuditRecord, build_record, with_hash

HEC_TOKEN = "test-hec-token-0123"
WAIT_S = 5.0


def make_record(seq: int, replica: str = "r1", **fields: Any) -> AuditRecord:
    base = {"seq": seq, "ts_us": 1_767_225_600_000_000 + seq, "replica": replica}
    return with_hash(
        build_record({"kind": "request", "operation": "SendMessage", **base, **fields})
    )


def items(count: int, replica: str = "r1", start: int = 1) -> list[ExportItem]:
    return [export_item(make_record(seq, replica)) for seq in range(start, start + count)]


# --- an RFC 5424 / RFC 6587 syslog receiver -------------------------------------------------

_HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


@dataclass
class SyslogMessage:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str
    params: dict[str, str]
    msg: dict[str, Any]


def parse_syslog(frame: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message whose STRUCTURED-DATA holds exactly one element."""
    header = _HEADER.match(frame)
    assert header, frame[:80]
    rest = frame[header.end() :].decode()
    assert rest.startswith("[")
    sd_id, _, rest = rest[1:].partition(" ")
    params: dict[str, str] = {}
    while not rest.startswith("]"):
        name, _, rest = rest.partition('="')
        value, index = [], 0
        while rest[index] != '"':
            if rest[index] == "\\" and rest[index + 1] in '"\\]':
                index += 1
            value.append(rest[index])
            index += 1
        params[name.strip()] = "".join(value)
        rest = rest[index + 1 :]
    assert rest[1] == " ", "SD must be followed by SP MSG"
    pri, timestamp, hostname, app_name, procid, msgid = header.groups()
    return SyslogMessage(
        int(pri), timestamp.decode(), hostname.decode(), app_name.decode(), procid.decode(),
        msgid.decode(), sd_id, params, msgspec.json.decode(rest[2:]),
    )  # fmt: skip


@dataclass
class SyslogReceiver:
    """A TCP syslog server with octet-counting framing that can be stopped and restarted."""

    port: int = 0
    messages: list[SyslogMessage] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop listening. Graceful: half-close each connection and read until the sender closes
        (a daemon shutting down cleanly); abrupt: abort every connection at once."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            if graceful:
                writer.write_eof()
            else:
                writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=WAIT_S)
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait (bounded) until ``predicate`` holds of what was received."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(predicate)

    def seqs(self, replica: str = "r1") -> list[int]:
        return [int(m.params["seq"]) for m in self.messages if m.params["replica"] == replica]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                length = await reader.readuntil(b" ")
                self.messages.append(parse_syslog(await reader.readexactly(int(length[:-1]))))
                async with self._changed:
                    self._changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.transport.abort()


# --- an HEC-compatible receiver ---------------------------------------------------------------


@dataclass
class HecReceiver:
    """Splunk HEC's /services/collector/event: checks the token, answers {"code": 0}."""

    port: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    fail_next: int = 0  # answer this many requests with 503 "server is busy"
    fail_at: set[int] = field(default_factory=set)  # ... and these (1-based) requests
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/collector/event", self._collect)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seqs(self, replica: str = "r1") -> list[int]:
        return [int(e["fields"]["seq"]) for e in self.events if e["fields"]["replica"] == replica]

    async def _collect(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != f"Splunk {HEC_TOKEN}":
            return web.json_response({"text": "Invalid token", "code": 4}, status=403)
        if self.fail_next or self.requests in self.fail_at:
            self.fail_next = max(0, self.fail_next - 1)
            return web.json_response({"text": "Server is busy", "code": 9}, status=503)
        body = await request.read()
        self.events.extend(msgspec.json.decode(line) for line in body.split(b"\n") if line)
        return web.json_response({"text": "Success", "code": 0})


@pytest.fixture
async def syslog_receiver() -> Any:
    receiver = SyslogReceiver()
    await receiver.start()
    yield receiver
    if receiver._server is not None:
        await receiver.stop(graceful=False)


@pytest.fixture
async def hec_receiver() -> Any:
    receiver = HecReceiver()
    await receiver.start()
    yield receiver
    if receiver._runner is not None:
        await receiver.stop()


# --- syslog -------------------------------------------------------------------------------------


async def test_syslog_frames_are_octet_counted_rfc5424_with_the_record_identity(
    syslog_receiver: SyslogReceiver,
) -> None:
    sink = SyslogSink("127.0.0.1", syslog_receiver.port, hostname="broker-1")
    batch = [*items(3), export_item(make_record(4, kind="auth.failure", status=401))]
    try:
        await sink.send(batch)
        await syslog_receiver.wait_for(lambda: len(syslog_receiver.messages) == 4)
    finally:
        await sink.aclose()
    first, auth = syslog_receiver.messages[0], syslog_receiver.messages[3]
    assert first.pri == 16 * 8 + 6  # local0.informational
    assert auth.pri == 16 * 8 + 3  # High -> error
    assert (first.hostname, first.app_name, first.msgid) == ("broker-1", "a2a-broker", "request")
    assert first.timestamp == "2026-01-01T00:00:00.000001Z"
    assert first.procid.isdigit()
    assert first.sd_id == "a2ab@32473"
    assert first.params == {"seq": "1", "replica": "r1", "hash": batch[0].hash}
    assert first.msg == batch[0].event
    assert auth.msgid == "auth.failure"
    assert syslog_receiver.seqs() == [1, 2, 3, 4]


async def test_syslog_reuses_one_connection_and_reconnects_after_the_receiver_restarts(
    syslog_receiver: SyslogReceiver,
) -> None:
    sink = SyslogSink("127.0.0.1", syslog_receiver.port, timeout_s=2.0)
    try:
        await sink.send(items(2))
        await sink.send(items(2, start=3))
        assert syslog_receiver.connections == 1
        await syslog_receiver.stop(graceful=False)
        with pytest.raises(SinkUnavailableError):
            await sink.send(items(1, start=5))
        await syslog_receiver.start()
        await sink.send(items(1, start=5))
        await syslog_receiver.wait_for(lambda: 5 in syslog_receiver.seqs())
    finally:
        await sink.aclose()
    assert syslog_receiver.seqs()[:4] == [1, 2, 3, 4]
    assert syslog_receiver.connections == 2


async def test_syslog_without_a_receiver_raises_sink_unavailable() -> None:
    receiver = SyslogReceiver()
    await receiver.start()
    port = receiver.port
    await receiver.stop()
    sink = SyslogSink("127.0.0.1", port, timeout_s=1.0)
    with pytest.raises(SinkUnavailableError, match=r"syslog 127\.0\.0\.1"):
        await sink.send(items(1))


def test_structured_data_values_and_header_fields_are_escaped_per_rfc5424() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    item = items(1)[0]
    frame = format_frame(item, facility=4, hostname="my host", procid="")
    length, _, message = frame.partition(b" ")
    assert int(length) == len(message)
    parsed = parse_syslog(message)
    assert (parsed.pri, parsed.hostname, parsed.procid) == (4 * 8 + 6, "my_host", "-")


# --- HEC ------------------------------------------------------------------------------------------


async def test_hec_posts_events_with_the_token_and_the_record_hash(
    hec_receiver: HecReceiver,
) -> None:
    sink = HecSink(hec_receiver.url, HEC_TOKEN, hostname="broker-1")
    batch = items(3)
    try:
        await sink.send(batch)
    finally:
        await sink.aclose()
    assert hec_receiver.requests == 1
    first = hec_receiver.events[0]
    assert first["time"] == pytest.approx(1_767_225_600.000001)
    assert (first["host"], first["source"], first["sourcetype"]) == (
        "broker-1",
        "a2a-broker",
        "ocsf:api_activity",
    )
    assert first["fields"] == {"record_hash": batch[0].hash, "replica": "r1", "seq": "1"}
    assert first["event"] == batch[0].event
    assert hec_receiver.seqs() == [1, 2, 3]


async def test_hec_splits_a_batch_by_event_count(hec_receiver: HecReceiver) -> None:
    sink = HecSink(hec_receiver.url, HEC_TOKEN, max_events=2)
    try:
        await sink.send(items(5))
    finally:
        await sink.aclose()
    assert hec_receiver.requests == 3
    assert hec_receiver.seqs() == [1, 2, 3, 4, 5]


async def test_hec_reports_how_much_of_a_split_batch_was_delivered(
    hec_receiver: HecReceiver,
) -> None:
    sink = HecSink(hec_receiver.url, HEC_TOKEN, max_events=2)
    hec_receiver.fail_at = {2}
    try:
        with pytest.raises(SinkUnavailableError) as raised:
            await sink.send(items(5))
    finally:
        await sink.aclose()
    assert raised.value.delivered == 2
    assert hec_receiver.seqs() == [1, 2]


async def test_hec_refusals_and_outages_raise_sink_unavailable_without_the_token(
    hec_receiver: HecReceiver,
) -> None:
    wrong = HecSink(hec_receiver.url, "wrong-token", timeout_s=2.0)
    busy = HecSink(hec_receiver.url, HEC_TOKEN, timeout_s=2.0)
    try:
        with pytest.raises(SinkUnavailableError, match="HTTP 403, code 4") as refused:
            await wrong.send(items(1))
        assert "wrong-token" not in str(refused.value)
        hec_receiver.fail_next = 1
        with pytest.raises(SinkUnavailableError, match="HTTP 503, code 9"):
            await busy.send(items(1))
        await hec_receiver.stop()
        with pytest.raises(SinkUnavailableError):
            await busy.send(items(1))
    finally:
        await wrong.aclose()
        await busy.aclose()
    assert hec_receiver.events == []


async def test_hec_rejects_a_200_that_is_not_code_0(unused_tcp_port: int) -> None:
    app = web.Application()

    async def not_hec(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>")

    app.router.add_post("/services/collector/event", not_hec)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    sink = HecSink(f"http://127.0.0.1:{unused_tcp_port}", HEC_TOKEN)
    try:
        with pytest.raises(SinkUnavailableError, match="HTTP 200, code none"):
            await sink.send(items(1))
    finally:
        await sink.aclose()
        await runner.cleanup()


# --- JSON lines ---------------------------------------------------------------------------------


async def test_json_lines_sink_appends_one_event_per_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonLinesSink(path)
    await sink.send(items(2))
    await sink.send(items(1, start=3))
    lines = path.read_bytes().splitlines()
    assert [msgspec.json.decode(line)["metadata"]["sequence"] for line in lines] == [1, 2, 3]
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    broken = JsonLinesSink(tmp_path / "missing-dir" / "events.jsonl")
    with pytest.raises(SinkUnavailableError):
        await broken.send(items(1))

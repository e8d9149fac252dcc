"""Stream bounds: heartbeats, idle timeout, maximum duration, and a caller that hangs up.

A second broker with tight stream limits sits in front of an SSE upstream run inside the test,
so the test can see exactly when the broker's connection to it goes away.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from broker.errors import StreamIdleTimeoutError, StreamMaxDurationError
from testkit.brokers import start_broker
from testkit.config import BrokerConfig
from testkit.procs import closed_url, free_port

from .conftest import _static_card
from .wire import A2A_V1, jsonrpc_request, user_message

IDLE_S, MAX_S, HEARTBEAT_S = 1.0, 2.5, 0.3


@dataclass
class SseUpstream:
    """An A2A-looking JSON-RPC SSE upstream: 'silent' sends one event then nothing, 'endless'
    sends an event every 0.1 s. ``gone`` is set when the broker's connection closes."""

    mode: str
    url: str = ""
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        n = 0
        while request.transport is not None and not request.transport.is_closing():
            if n == 0 or self.mode == "endless":
                event = {
                    "jsonrpc": "2.0",
                    "id": body["id"],
                    "result": {
                        "statusUpdate": {
                            "taskId": "t-1",
                            "contextId": "c-1",
                            "status": {"state": "TASK_STATE_WORKING"},
                            "n": n,
                        }
                    },
                }
                try:
                    await response.write(f"data: {json.dumps(event)}\r\n\r\n".encode())
                except ConnectionError:
                    break
                n += 1
            await asyncio.sleep(0.1)
        self.gone.set()
        return response  # the connection is gone; aiohttp discards this


@dataclass(frozen=True)
class TightBroker:
    url: str
    admin_headers: dict[str, str]
    caller_headers: dict[str, str]


@pytest.fixture(scope="module")
def tight_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TightBroker]:
    logs = tmp_path_factory.mktemp("tight")
    config = BrokerConfig(port=free_port()).set(
        "limits",
        sse_idle_timeout_s=IDLE_S,
        sse_max_duration_s=MAX_S,
        sse_heartbeat_s=HEARTBEAT_S,
        upstream_timeout_s=2.0,
    )
    with start_broker(config, log_dir=logs, name="tight-broker") as broker:
        caller = broker.register("carol", _static_card("carol", closed_url()))
        yield TightBroker(broker.url, broker.admin_headers, {"Authorization": f"Bearer {caller}"})


@pytest.fixture
async def upstream(
    request: pytest.FixtureRequest, tight_broker: TightBroker
) -> AsyncIterator[tuple[SseUpstream, str]]:
    sse = SseUpstream(request.param)
    app = web.Application()
    app.router.add_post("/a2a/jsonrpc", sse.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    name = f"sse-{secrets.token_hex(4)}"
    async with httpx.AsyncClient(trust_env=False) as admin:
        card = _static_card(name, f"http://127.0.0.1:{port}")
        r = await admin.post(
            f"{tight_broker.url}/admin/agents",
            headers=tight_broker.admin_headers,
            json={"name": name, "card": card},
        )
        assert r.status_code == 201, r.text
    try:
        yield sse, f"{tight_broker.url}/agents/{name}/jsonrpc"
    finally:
        await runner.cleanup()


async def _stream(url: str, headers: dict[str, str]) -> AsyncIterator[str]:
    body = jsonrpc_request("SendStreamingMessage", {"message": user_message("go")})
    async with (
        httpx.AsyncClient(trust_env=False, timeout=10) as http,
        http.stream("POST", url, json=body, headers={**A2A_V1, **headers}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            yield line


def _error_reason(lines: list[str]) -> str:
    data = next(
        ln
        for i, ln in enumerate(lines)
        if ln.startswith("data:") and lines[i - 1] == "event: error"
    )
    return str(json.loads(data[5:])["error"]["data"][0]["reason"])


@pytest.mark.parametrize("upstream", ["silent"], indirect=True)
async def test_quiet_upstream_gets_heartbeats_then_idle_timeout(
    upstream: tuple[SseUpstream, str], tight_broker: TightBroker
) -> None:
    sse, url = upstream
    lines = [line async for line in _stream(url, tight_broker.caller_headers)]
    assert lines[0].startswith("data:")  # the upstream's one event came through
    assert lines.count(": ping") >= 2  # heartbeats while the upstream was quiet
    assert _error_reason(lines) == StreamIdleTimeoutError.reason
    await asyncio.wait_for(sse.gone.wait(), 3)


@pytest.mark.parametrize("upstream", ["endless"], indirect=True)
async def test_stream_ends_at_the_maximum_duration(
    upstream: tuple[SseUpstream, str], tight_broker: TightBroker
) -> None:
    sse, url = upstream
    started = time.monotonic()
    lines = [line async for line in _stream(url, tight_broker.caller_headers)]
    assert MAX_S - 0.2 <= time.monotonic() - started < MAX_S + 2
    assert sum(ln.startswith("data:") for ln in lines) > 10
    assert _error_reason(lines) == StreamMaxDurationError.reason
    await asyncio.wait_for(sse.gone.wait(), 3)


@pytest.mark.parametrize("upstream", ["endless"], indirect=True)
async def test_caller_hanging_up_closes_the_upstream_stream(
    upstream: tuple[SseUpstream, str], tight_broker: TightBroker
) -> None:
    sse, url = upstream
    seen = 0
    async for line in _stream(url, tight_broker.caller_headers):
        seen += line.startswith("data:")
        if seen == 2:
            break  # leaving the stream context closes the caller's connection
    # Well before the broker's own maximum duration would have closed it:
    await asyncio.wait_for(sse.gone.wait(), MAX_S / 2)


@pytest.mark.parametrize("upstream", ["endless"], indirect=True)
async def test_suspending_the_target_ends_its_open_streams(
    upstream: tuple[SseUpstream, str], tight_broker: TightBroker
) -> None:
    sse, url = upstream
    name = url.rsplit("/", 2)[-2]
    lines: list[str] = []
    started = time.monotonic()
    async with httpx.AsyncClient(trust_env=False) as admin:
        async for line in _stream(url, tight_broker.caller_headers):
            lines.append(line)
            if len(lines) == 2:  # the stream is open: stop the agent
                r = await admin.post(
                    f"{tight_broker.url}/admin/agents/{name}/suspend",
                    headers=tight_broker.admin_headers,
                )
                assert r.status_code == 200
    assert _error_reason(lines) == "AGENT_SUSPENDED"
    assert time.monotonic() - started < MAX_S  # ended by the suspension, not the time limit
    await asyncio.wait_for(sse.gone.wait(), 2)

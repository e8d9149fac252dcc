"""What the MCP layer's pieces cost per request and per streamed event, beside the A2A reading.

    .venv/bin/python -m benchmarks.mcp_costs [--number N]

Prints µs per operation (best of 5 runs of N, one process, one core): reading a 600-byte
``tools/call`` (with its Mcp-Method/Mcp-Name headers), reading and filtering a 50-tool
``tools/list`` answer, issuing and opening a sealed session id and a sealed cursor, and relaying
one SSE progress event. ``benchmarks.reading_costs`` measures the A2A reading the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import timeit
from collections.abc import AsyncIterator, Callable

import msgspec

from broker.mcp.events import relay_sse
from broker.mcp.listing import filter_result
from broker.mcp.reading import read_message
from broker.mcp.sessions import (
    CursorPosition,
    CursorSeal,
    Sealer,
    SessionSeal,
    UpstreamSession,
    derive_seal_key,
)

CALL = json.dumps({"jsonrpc": "2.0", "id": 17, "method": "tools/call", "params": {
    "name": "create_issue", "_meta": {"progressToken": "p1"},
    "arguments": {"repo": "acme/api", "title": "Flaky test", "body": "x" * 400,
                  "labels": ["bug", "ci"]}}}).encode()
HEADERS = {"mcp-method": "tools/call", "mcp-name": "create_issue"}
LIST = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"nextCursor": "50", "tools": [
    {"name": f"tool_{i}", "description": "d" * 60, "inputSchema": {"type": "object"}}
    for i in range(50)]}}).encode()
PROGRESS = (b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":'
            b'{"progressToken":"p1","progress":3,"total":10}}\r\n\r\n')


def per_op_us(run: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def filter_list() -> bytes:
    answer = read_message(LIST)
    assert answer.payload is not None
    result = filter_result("tools/list", answer.payload["result"],
                           lambda op: not op.name.endswith("7"), lambda c: "sealed")
    return msgspec.json.encode({**answer.payload, "result": result})


def relay_events_us(number: int) -> float:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(number):
            yield PROGRESS

    async def run() -> None:
        async for _ in relay_sse(chunks(), request_id=msgspec.Raw(b"17"), idle_timeout_s=5,
                                 max_event_bytes=1 << 20):
            pass

    return min(timeit.repeat(lambda: asyncio.run(run()), number=1, repeat=5)) / number * 1e6


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=5000)
    number = parser.parse_args(argv).number
    sealer = Sealer([derive_seal_key(b"benchmark")])
    sessions, cursors = SessionSeal(sealer, 3600), CursorSeal(sealer, 600)
    upstream = {"github": UpstreamSession("2bcd631383d34ad2b1684d09c832c4c0", "2025-11-25")}
    token = sessions.issue("alice", "github", upstream)
    cursor = cursors.issue("alice", "github", "tools/list", CursorPosition("github", "50"))
    costs = {
        "read tools/call (600 B, headers checked)": per_op_us(
            lambda: read_message(CALL, HEADERS), number),
        "read + filter tools/list answer (50 tools)": per_op_us(filter_list, number // 10 or 1),
        "issue sealed session id": per_op_us(
            lambda: sessions.issue("alice", "github", upstream), number),
        "open sealed session id": per_op_us(
            lambda: sessions.open("alice", "github", token), number),
        "open sealed cursor": per_op_us(
            lambda: cursors.open("alice", "github", "tools/list", cursor), number),
        "relay one SSE progress event": relay_events_us(number),
    }
    for name, us in costs.items():
        print(f"{name:<45} {us:8.1f} µs")
    return costs


if __name__ == "__main__":
    main()

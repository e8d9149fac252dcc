"""What one reading costs the broker: the parse stages per request, re-framing per stream event.

    .venv/bin/python -m benchmarks.reading_costs [--number N]

Prints µs per operation (best of 5 runs of N, one process, one core): ParseRequest + ReadParams
on a 400-byte SendMessage (JSON-RPC and REST), the same with a snake_case task and reference
tasks, and the re-framing of one JSON-RPC and one REST stream event (decision 0015, 0017).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import timeit
from collections.abc import Callable

import msgspec

from broker.pipeline.stage import fold
from broker.protocols.a2a.answers import reframe
from broker.settings import LimitSettings
from broker.stages.parse import ParseRequest, ReadParams
from broker.types import MediationContext, Outcome, Reply

HEADERS = {"a2a-version": "1.0", "content-type": "application/json"}
MESSAGE = {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hello world " * 20}]}


async def _answer(ctx: MediationContext, call_next: object) -> Outcome:
    return Reply(200, b"")


def parse_run(binding: str, body: bytes, tail: str = "") -> Callable[[int], float]:
    """Seconds for ``n`` requests through the two stages, awaited in one running loop."""
    limits = LimitSettings()
    handler = fold([ParseRequest(limits), ReadParams(limits), _answer])

    async def read() -> bytes:
        return body

    async def many(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            ctx = MediationContext(
                binding=binding,  # type: ignore[arg-type]
                target_name="t",
                http_method="POST",
                headers=HEADERS,
                read_body=read,
                rest_tail=tail,
            )
            await handler(ctx)
        return time.perf_counter() - started

    return lambda n: asyncio.run(many(n))


def per_op_us(run: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def per_request_us(run: Callable[[int], float], number: int) -> float:
    return min(run(number) for _ in range(5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=5000)
    number = parser.parse_args().number
    send = {"message": {**MESSAGE, "metadata": {"skill": "echo"}}}
    tricky = {"message": {**MESSAGE, "task_id": "t-1", "reference_task_ids": ["t-2", "t-3"]}}
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage"}
    event = {"statusUpdate": {"taskId": "4e5c2f7a-1b2c", "contextId": "c",
                              "status": {"state": "TASK_STATE_WORKING"}}}  # fmt: skip
    rpc_event = b"data: " + json.dumps({**rpc, "result": event}).encode() + b"\r\n\r\n"
    rest_event = b"data: " + json.dumps(event).encode() + b"\r\n\r\n"
    parses = {
        "parse JSON-RPC SendMessage": parse_run(
            "jsonrpc", json.dumps({**rpc, "params": send}).encode()
        ),
        "parse JSON-RPC, snake_case + references": parse_run(
            "jsonrpc", json.dumps({**rpc, "params": tricky}).encode()
        ),
        "parse REST message:send": parse_run("rest", json.dumps(send).encode(), "/message:send"),
    }
    frames = {
        "re-frame a JSON-RPC event": lambda: reframe("jsonrpc", msgspec.Raw(b"1"), rpc_event),
        "re-frame a REST event": lambda: reframe("rest", None, rest_event),
    }
    for name, parse in parses.items():
        print(f"{name:45s} {per_request_us(parse, number):7.2f} µs")
    for name, frame in frames.items():
        print(f"{name:45s} {per_op_us(frame, number):7.2f} µs")


if __name__ == "__main__":
    main()

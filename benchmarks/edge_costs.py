"""What the edge costs a mediated request, in process, without the network (decision 0064).

    .venv/bin/python -m benchmarks.edge_costs [--number N] [--rounds R]

1. The JSON-RPC edge both ways the app can take it: the Litestar route (``jsonrpc_edge``, its
   request and response objects) and the raw ASGI edge (``MediationEdges``), in front of a
   runtime whose pipeline reads the body, suspends once and answers a fixed reply.
2. A pipeline of 16 pass-through stages and an innermost one that suspends six times (as a
   request does for its store round trips, the upstream and the audit), folded the old way (an
   ``async def`` wrapper per stage) and as ``broker.pipeline.stage.fold`` folds it now.

Both print the event loop thread's CPU µs per request (``time.thread_time``), the median of
``--rounds`` rounds of ``--number`` requests each, on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from litestar import Litestar
from litestar.exceptions import HTTPException

from broker.errors import BrokerError
from broker.http import mediation
from broker.http.app import broker_error_response, http_error_response, internal_error_response
from broker.pipeline.stage import fold
from broker.types import Reply

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"m-1",'
    b'"role":"ROLE_USER","parts":[{"text":"hello"}]}}}'
)
ANSWER = Reply(
    200,
    b'{"jsonrpc":"2.0","id":1,"result":{"task":{"id":"t","status":{"state":"TASK_STATE_COMPLETED"}}}}',
    "application/json",
    {"a2a-version": "1.0"},
)
HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"content-type", b"application/json"),
    (b"a2a-version", b"1.0"),
    (b"authorization", b"Bearer an-agent-credential-of-some-length"),
    (b"content-length", str(len(BODY)).encode()),
    (b"user-agent", b"wrk"),
]


class _Runtime:
    async def mediate(self, ctx: Any) -> Reply:
        await ctx.read_body()
        await asyncio.sleep(0)
        return ANSWER


def _apps() -> dict[str, Any]:
    app = Litestar(
        route_handlers=[mediation.jsonrpc_edge, mediation.rest_edge],
        exception_handlers={
            BrokerError: broker_error_response,
            HTTPException: http_error_response,
            Exception: internal_error_response,
        },
        request_max_body_size=1 << 20,
        openapi_config=None,
        debug=False,
        logging_config=None,
    )
    app.state.runtime = _Runtime()
    return {"Litestar route": app, "raw ASGI edge": mediation.MediationEdges(app, 1 << 20)}


async def _one(app: Any) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000),
             "scheme": "http", "method": "POST", "root_path": "", "path": "/agents/bench/jsonrpc",
             "raw_path": b"/agents/bench/jsonrpc", "query_string": b"", "headers": HEADERS,
             "state": {}}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent


class _Pass:
    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        return await call_next(ctx)


class _Inner:
    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()
        for _ in range(6):
            future = loop.create_future()
            loop.call_soon(future.set_result, None)
            await future
        return ANSWER


def _wrapped_fold(stages: list[Any]) -> Callable[[Any], Awaitable[Any]]:
    """The fold as it was: an ``async def`` wrapper (one more coroutine frame) per stage."""

    async def end(ctx: Any) -> Any:
        raise RuntimeError

    def bind(stage: Any, call_next: Any) -> Callable[[Any], Awaitable[Any]]:
        async def run(ctx: Any) -> Any:
            return await stage(ctx, call_next)

        return run

    handler: Callable[[Any], Awaitable[Any]] = end
    for stage in reversed(stages):
        handler = bind(stage, handler)
    return handler


async def _timed(runs: dict[str, Callable[[], Awaitable[None]]], number: int, rounds: int) -> None:
    took: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        for _ in range(number // 10):
            await run()
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.thread_time()
            for _ in range(number):
                await run()
            took[name].append((time.thread_time() - started) / number * 1e6)
    for name, values in took.items():
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:<34} {statistics.median(values):6.1f} µs/request  ({spread})")


async def main(number: int, rounds: int) -> None:
    apps = _apps()
    print("The edge, around a pipeline that answers at once:")
    await _timed({name: (lambda app=app: _one(app)) for name, app in apps.items()}, number, rounds)
    stages = [*(_Pass() for _ in range(16)), _Inner()]
    folds = {"async def wrapper per stage (was)": _wrapped_fold(stages),
             "fold (a bound callable per stage)": fold(stages)}  # fmt: skip
    print("17 stages, six suspensions:")
    await _timed({name: (lambda p=p: p(None)) for name, p in folds.items()}, number, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    uvloop.run(main(args.number, args.rounds))

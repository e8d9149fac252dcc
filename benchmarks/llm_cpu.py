"""CPU time per call of the broker's LLM endpoint, in process: the raw ASGI edge, the whole LLM
pipeline, the audit (a fsynced file, as by default) and the lean client to a real provider.

    .venv/bin/python -m benchmarks.llm_cpu [--number N] [--rounds R] [--concurrency C]

Starts ``benchmarks.fake_llm`` as a process of its own (on the other core where there is one),
builds the broker's app from a ``BrokerConfig`` as scenario (i) does (memory store, no policy,
no budgets, the access log to a file), registers one caller through the admin API, and drives
``POST /v1/chat/completions`` straight into the ASGI app, C at a time, R rounds of N calls after
a warm-up. Prints the CPU µs per call (``time.process_time``: this process only, its threads
included) of each round, the best and the median, and the calls per second of wall time. No
HTTP server and no load generator share the process, so the figure moves much less with the
machine's other load than wrk's (scenario ``i``); it leaves out uvicorn's own parsing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.fake_llm import CHAT_PATH
from benchmarks.scenario_llm import CHAT_BODY, MODEL, PROVIDER_KEY_ENV
from benchmarks.upstream import card as upstream_card
from broker.http.app import create_app
from broker.http.mediation import MediationEdges
from broker.observability.logs import configure_logging
from broker.settings import load_settings
from testkit.config import BrokerConfig
from testkit.procs import free_port

_ADMIN = "a2ab-admin-llm-cpu"


class _Asgi:
    """Calls into an ASGI app with a body and collects the answer."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def call(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": raw, "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        sent = False
        status = 0
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # a disconnect never comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self._app(scope, receive, send)
        return status, b"".join(parts)


async def _lifespan(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, Any]]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.get_running_loop().create_future()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                   inbox.get, send))  # fmt: skip
    message = await started
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the broker did not start: {message}")
    return task, inbox


async def _run(args: argparse.Namespace, provider_port: int, work: Path) -> None:
    config = BrokerConfig(port=free_port()).set("server", workers=1, log_level="info")
    config.set("store", backend="memory")
    config.set(
        "audit",
        dir=str(work / "audit"),
        witness_dir=str(work / "witness"),
        **({"fsync": False} if os.environ.get("LLM_CPU_NOFSYNC") else {}),
        **({"backend": "off"} if os.environ.get("LLM_CPU_NOAUDIT") else {}),
    )
    config.set("admin", token_sha256=hashlib.sha256(_ADMIN.encode()).hexdigest())
    config.set("llm.providers.fake", base_url=f"http://127.0.0.1:{provider_port}/v1",
               key_env=PROVIDER_KEY_ENV, models=[MODEL])  # fmt: skip
    os.environ[PROVIDER_KEY_ENV] = "sk-bench-provider"
    path = config.write(work / "broker.toml")
    settings = load_settings(str(path))
    configure_logging("info")
    log_file = (work / "broker.log").open("a", encoding="utf-8")
    logging.getLogger().handlers[0].setStream(log_file)  # type: ignore[attr-defined]
    app = MediationEdges(create_app(settings), settings.limits.max_body_bytes)
    task, inbox = await _lifespan(app)
    asgi = _Asgi(app)
    card = upstream_card("loadgen", "http://127.0.0.1:9")
    status, body = await asgi.call(
        "POST",
        "/admin/agents",
        json.dumps({"name": "loadgen", "card": card}).encode(),
        {"authorization": f"Bearer {_ADMIN}", "content-type": "application/json"},
    )
    if status != 201:
        raise RuntimeError(f"registering the caller: {status} {body[:300]!r}")
    headers = {
        "authorization": f"Bearer {json.loads(body)['credential']}",
        "content-type": "application/json",
    }

    async def one() -> None:
        status, answer = await asgi.call("POST", CHAT_PATH, CHAT_BODY, headers)
        if status != 200:
            raise RuntimeError(f"chat: {status} {answer[:300]!r}")

    async def batch(n: int) -> None:
        async def worker(k: int) -> None:
            for _ in range(k):
                await one()
                # A served broker reads a client's next call from its socket, by which time the
                # loop has run what the last call left ready: the audit's writer task writes
                # the outcome record. Called back to back, the next decision record would find
                # that record still queued and be fsynced by the writer task, not by its caller
                # as a lone batch (GroupCommitter.append), a path the served broker rarely takes.
                await asyncio.sleep(0)

        share, extra = divmod(n, args.concurrency)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(args.concurrency)))

    await batch(min(args.number, 500))  # warm-up: connections, caches, the fsync averages
    cpu: list[float] = []
    for _ in range(args.rounds):
        gc.collect()
        wall, started = time.perf_counter(), time.process_time()
        await batch(args.number)
        spent, wall = time.process_time() - started, time.perf_counter() - wall
        cpu.append(spent / args.number * 1e6)
        print(f"  {cpu[-1]:7.1f} us/call  {args.number / wall:7.0f} calls/s", flush=True)
    print(f"c={args.concurrency}: best {min(cpu):.1f} us/call, median {statistics.median(cpu):.1f}")
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    log_file.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.fake_llm", "--port", str(port), "--model", MODEL]
    if (os.cpu_count() or 1) > 1:
        argv = ["taskset", "-c", "1", *argv]
        os.sched_setaffinity(0, {0})
    provider = subprocess.Popen(argv)
    try:
        _wait_ready(port)
        with tempfile.TemporaryDirectory(prefix="llm-cpu-") as tmp:
            uvloop.run(_run(args, port, Path(tmp)))
    finally:
        provider.terminate()
        provider.wait()


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ready", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    main()

"""CPU time per request of the broker's upstream transports, in process: aiohttp vs the lean one.

    .venv/bin/python -m benchmarks.transport_cpu [--number N] [--rounds R]

Starts ``benchmarks.upstream`` (its own process, so its CPU is not counted), then sends it, from
this process on uvloop, R rounds of N unary JSON-RPC ``SendMessage`` at concurrency 1, 16 and 64
through ``AiohttpTransport`` and ``Http11Transport`` in turn (``send`` + ``read`` + ``close``, as
the forward stage does), and prints this process's CPU µs per request (``time.process_time``)
for each, with the best and the median of the rounds, and the median wall time of a request.
Other processes on a shared machine inflate wall time, hardly the CPU figure (decision 0071).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request

import uvloop

from broker.outbound.client import AiohttpTransport
from broker.outbound.http11 import Http11Transport
from broker.settings import EgressSettings, LimitSettings, RegistrySettings
from testkit.procs import free_port

BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
    "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}).encode()  # fmt: skip
HEADERS = {"content-type": "application/json", "a2a-version": "1.0",
           "authorization": "Bearer x" * 20}  # fmt: skip
KINDS = {"aiohttp": AiohttpTransport, "http11": Http11Transport}


async def _round(
    client: AiohttpTransport | Http11Transport, url: str, n: int, c: int
) -> tuple[float, float]:
    """CPU µs per request and the median wall time of one request, in ms."""
    walls: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            sent = time.perf_counter()
            response = await client.send("POST", url, headers=HEADERS, body=BODY, stream=False)
            try:
                await response.read(1 << 20)
            finally:
                response.close()
            walls.append(time.perf_counter() - sent)

    started = time.process_time()
    await asyncio.gather(*(worker(n // c) for _ in range(c)))
    cpu = (time.process_time() - started) / (n // c * c) * 1e6
    return cpu, statistics.median(walls) * 1e3


Results = dict[tuple[str, int], list[tuple[float, float]]]


async def _measure(url: str, number: int, rounds: int) -> Results:
    limits, settings = LimitSettings(), (EgressSettings(allow_loopback=True), RegistrySettings())
    clients = {name: kind(settings[0], limits, settings[1]) for name, kind in KINDS.items()}
    results: Results = {}
    try:
        for client in clients.values():  # warm up: pools filled, code paths hot
            await _round(client, url, 2000, 64)
        for _ in range(rounds):
            for c in (1, 16, 64):
                for name, client in clients.items():
                    results.setdefault((name, c), []).append(
                        await _round(client, url, number, c)
                    )
    finally:
        for client in clients.values():
            await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.upstream", "--port", str(port)]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/_ready", timeout=1).close()  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        results = uvloop.run(_measure(base + "/jsonrpc", args.number, args.rounds))
    finally:
        upstream.terminate()
        upstream.wait()
    print("transport  c   CPU us/req: best  median  rounds     p50 ms: median")
    for (name, c), values in results.items():
        cpu = [v[0] for v in values]
        rounds = " ".join(f"{v:.0f}" for v in cpu)
        p50 = statistics.median(v[1] for v in values)
        best, median = min(cpu), statistics.median(cpu)
        print(f"{name:8} {c:3}   {best:9.0f} {median:7.0f}  {rounds:20} {p50:.3f}")


if __name__ == "__main__":
    main()

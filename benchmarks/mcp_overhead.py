"""MCP through the broker beside A2A, in one run: broker CPU per request and latency.

    .venv/bin/python -m benchmarks.mcp_overhead [--seconds 6] [--connections 16]

One broker process (memory store, a policy file with MCP rules, file audit without fsync), the
A2A benchmark upstream (``benchmarks.upstream``) and a raw MCP upstream
(``benchmarks.mcp_upstream``), each answering from memory. wrk (one thread, closed loop) drives
each case in turn at the same concurrency:

    a2a-send    SendMessage (JSON-RPC) through /agents/bench/jsonrpc
    mcp-call    tools/call through /mcp/bench (no session: the upstream holds none)
    mcp-list    tools/list through /mcp/bench: 50 tools, each judged by policy, re-encoded
    mcp-direct  tools/call straight to the MCP upstream (no broker: the floor)

For each case: requests/s, p50 and p99, and the broker's CPU per request (user + system time of
its process over the run, divided by the requests). The machine is shared: read the ratios
between rows of one run, and the load average printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import WrkResult, preflight, run_wrk, write_script
from benchmarks.proc_stats import cpu_seconds
from benchmarks.upstream import card
from testkit.brokers import launch_broker
from testkit.config import BrokerConfig
from testkit.procs import free_port, launch_service

CALLER = "bench-caller"
POLICY = """\
g, bench-caller, role:dev
p, role:dev, *, originate, allow
p, role:dev, bench, SendMessage:*, allow
p, role:dev, mcp:bench, mcp:*, allow
p, role:dev, *, mcp:tools/call:tool_07, deny
"""
SEND = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
    "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}}).encode()
CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "tool_01", "arguments": {"repo": "acme/api", "title": "x" * 64}}}).encode()
LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
MCP_HEADERS = {"content-type": "application/json", "mcp-protocol-version": "2025-11-25",
               "accept": "application/json, text/event-stream"}


@dataclass(frozen=True)
class Case:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    expect: bytes
    through_broker: bool = True


@dataclass(frozen=True)
class Row:
    case: str
    result: WrkResult
    cpu_us: float | None


def run(seconds: float, connections: int) -> tuple[list[Row], tuple[float, float, float]]:
    work = Path(tempfile.mkdtemp(prefix="mcp-overhead-"))
    with ExitStack() as stack:
        a2a = launch_service("benchmarks.upstream", name="a2a-upstream", log_dir=work)
        mcp = launch_service("benchmarks.mcp_upstream", name="mcp-upstream", log_dir=work)
        for service in (a2a, mcp):
            stack.callback(service.stop)
            service.wait_ready()
        credential = f"a2ab_bench-{secrets.token_hex(8)}"
        (work / "policy.csv").write_text(POLICY)
        config = BrokerConfig(port=free_port()).set("server", log_level="warning")
        config.use_policy_file(work / "policy.csv").set("audit", fsync=False)
        config.identities({CALLER: credential}).set("mcp.servers.bench", url=f"{mcp.url}/mcp")
        broker = launch_broker(config, log_dir=work, name="broker")
        stack.enter_context(broker.process.stopped_after())
        broker.wait_ready()
        broker.register("bench", card("bench", a2a.url))
        auth = {"authorization": f"Bearer {credential}"}
        cases = [
            Case("a2a-send", broker.jsonrpc_url("bench"), SEND,
                 {"content-type": "application/json", "a2a-version": "1.0", **auth},
                 b"TASK_STATE_COMPLETED"),
            Case("mcp-call", f"{broker.url}/mcp/bench", CALL, {**MCP_HEADERS, **auth}, b"done"),
            Case("mcp-list", f"{broker.url}/mcp/bench", LIST, {**MCP_HEADERS, **auth},
                 b"tool_49"),
            Case("mcp-direct", f"{mcp.url}/mcp", CALL, MCP_HEADERS, b"done", False),
        ]
        rows = [_measure(case, broker.process.pid, work, seconds, connections)
                for case in cases]
    return rows, os.getloadavg()


def _measure(case: Case, broker_pid: int, work: Path, seconds: float, connections: int) -> Row:
    preflight(case.url, case.body, case.headers, case.expect)
    script = write_script(work / f"{case.name}.lua", case.body, case.headers)
    before = sum(cpu_seconds(broker_pid))
    result = run_wrk(case.url, script, connections, seconds, None)
    used = sum(cpu_seconds(broker_pid)) - before
    cpu_us = used / result.requests * 1e6 if case.through_broker and result.requests else None
    return Row(case.name, result, cpu_us)


def table(rows: list[Row], load: tuple[float, float, float], connections: int) -> str:
    lines = [f"c={connections}; load average during the run: "
             f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores)", "",
             "| case | req/s | p50 ms | p99 ms | errors | broker CPU µs/req |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        r = row.result
        cpu = f"{row.cpu_us:,.0f}" if row.cpu_us is not None else "-"
        lines.append(f"| {row.case} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{r.errors} | {cpu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    rows, load = run(args.seconds, args.connections)
    print(table(rows, load, args.connections))


if __name__ == "__main__":
    main()

"""What data controls add to a real broker's CPU per A2A hop, end to end.

    .venv/bin/python -m benchmarks.datacontrols_hop [--requests N] [--rounds R]

Two brokers side by side (memory store, audit off), one with ``[datacontrols] enabled = true``
(the default rules: every type found is tagged), the other without; the same 2 KB SendMessage
of prose with nothing to find goes through each, one request at a time, to the benchmark
upstream (a fast fixed answer). Each round measures both brokers in turn (the order alternates)
by their processes' CPU time read from ``/proc`` before and after, so what other work on the
machine does shows in wall time, not in these figures. Prints CPU µs per request for each and
the difference, per round and the median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path

import httpx

from benchmarks.datacontrols_costs import prose
from benchmarks.proc_stats import cpu_seconds
from benchmarks.upstream import card
from testkit.brokers import BrokerProcess, start_broker
from testkit.config import BrokerConfig
from testkit.procs import closed_url, free_port, launch_service, start_services


def _config(controls: bool) -> BrokerConfig:
    config = BrokerConfig(port=free_port()).set("store", backend="memory")
    config.set("audit", backend="off").set("server", log_level="warning")
    return config.set("datacontrols", enabled=True) if controls else config


def _body(text: str) -> dict[str, object]:
    message = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}


def _cpu_per_request_us(broker: BrokerProcess, credential: str, requests: int) -> float:
    headers = {"Authorization": f"Bearer {credential}", "A2A-Version": "1.0"}
    url = broker.jsonrpc_url("bench")
    text = prose(2048)
    with httpx.Client(headers=headers, trust_env=False, timeout=10) as http:
        http.post(url, json=_body(text)).raise_for_status()  # a warm connection
        before = sum(cpu_seconds(broker.process.pid))
        for _ in range(requests):
            http.post(url, json=_body(text)).raise_for_status()
        after = sum(cpu_seconds(broker.process.pid))
    return (after - before) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # CPU time in /proc counts in 10 ms ticks: a few thousand requests make that small.
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="a2a-dc-hop-") as tmp:
        logs = Path(tmp)
        upstream = launch_service("benchmarks.upstream", name="upstream", log_dir=logs)
        with (
            start_services([upstream]),
            start_broker(_config(False), log_dir=logs, name="off") as off,
            start_broker(_config(True), log_dir=logs, name="on") as on,
        ):
            credentials = {}
            for broker in (off, on):
                broker.register("bench", card("bench", upstream.url))
                credentials[broker.url] = broker.register("loadgen", card("loadgen", closed_url()))
            figures: dict[str, list[float]] = {"off": [], "on": []}
            for round_ in range(args.rounds):
                pair = [("off", off), ("on", on)]
                for name, broker in pair if round_ % 2 == 0 else pair[::-1]:
                    us = _cpu_per_request_us(broker, credentials[broker.url], args.requests)
                    figures[name].append(us)
                last_off, last_on = figures["off"][-1], figures["on"][-1]
                print(f"round {round_ + 1}: off {last_off:7.1f} µs/req, on {last_on:7.1f} µs/req, "
                      f"added {last_on - last_off:6.1f} µs", flush=True)  # fmt: skip
    off_us, on_us = statistics.median(figures["off"]), statistics.median(figures["on"])
    print(f"median: off {off_us:.1f} µs/req, on {on_us:.1f} µs/req, "
          f"added {on_us - off_us:.1f} µs ({on_us / off_us - 1:+.0%})")  # fmt: skip


if __name__ == "__main__":
    main()

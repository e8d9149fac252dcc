"""What the broker asks of Redis per request: read from the private redis-server around a point.

Two readings, both outside wrk's hot path:

* ``RedisCounters`` reads ``INFO commandstats``, ``INFO stats`` and ``INFO cpu`` before and after
  a point. Redis counts the commands a Lua script runs (``redis.call``) in ``commandstats`` as
  well as the ``EVALSHA`` that ran it, so "commands" there is all the work Redis did;
  ``total_reads_processed`` (socket reads from clients) stands for round trips, since one
  request, or one pipeline, is read in one go.
* ``monitor_probe`` sends a few hundred requests one at a time while ``MONITOR`` is on, after the
  points, and sorts each command by who issued it: the broker over the network, or a script
  (``[0 lua]``). That split is what ``commandstats`` cannot give.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

_OWN = frozenset({"info", "monitor", "echo", "client|setname", "hello"})  # the harness's own


def _connect(url: str, timeout: float = 5.0) -> socket.socket:
    parsed = urlparse(url)
    return socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout)


def _command(sock: socket.socket, *args: str) -> bytes:
    """Send one command (RESP) and read its whole answer (a bulk string, for INFO)."""
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))  # fmt: skip
    buf = b""
    while b"\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n")
    if not head.startswith(b"$"):
        return head
    size = int(head[1:])
    while len(rest) < size + 2:
        rest += sock.recv(65536)
    return rest[:size]


def info(url: str) -> dict[str, Any]:
    """Calls per command (``cmdstat_*``), socket reads and Redis CPU seconds so far."""
    with _connect(url) as sock:
        text = _command(sock, "INFO", "everything").decode()
    calls: dict[str, int] = {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = int(re.search(r"calls=(\d+)", rest).group(1))  # type: ignore[union-attr]
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value
    return {
        "calls": calls,
        "reads": int(fields.get("total_reads_processed", 0)),
        "cpu_s": float(fields.get("used_cpu_sys", 0)) + float(fields.get("used_cpu_user", 0)),
    }


@dataclass
class RedisCounters:
    """INFO before and after a point; per-request figures over wrk's request count."""

    url: str
    before: dict[str, Any] | None = None

    def start(self) -> None:
        self.before = info(self.url)

    def per_request(self, requests: int) -> dict[str, Any]:
        assert self.before is not None
        after = info(self.url)
        n = max(requests, 1)
        calls = {
            name: (count - self.before["calls"].get(name, 0)) / n
            for name, count in after["calls"].items()
            if name not in _OWN and count > self.before["calls"].get(name, 0)
        }
        return {
            "redis_cmds_per_req": sum(calls.values()),
            "redis_scripts_per_req": calls.get("evalsha", 0.0) + calls.get("eval", 0.0),
            "redis_reads_per_req": max(after["reads"] - self.before["reads"] - 1, 0) / n,
            "redis_cpu_us_per_req": (after["cpu_s"] - self.before["cpu_s"]) / n * 1e6,
            "redis_calls": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        }


_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


def monitor_probe(
    url: str, target_url: str, headers: Mapping[str, str], body: bytes, requests: int = 200
) -> dict[str, Any]:
    """Per request: commands the broker sent over the network, and those scripts ran."""
    sentinel = f"a2ab-bench-probe-end-{time.monotonic_ns()}"
    with _connect(url, timeout=30.0) as mon:
        mon.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        lines: list[str] = []
        buf = b""

        def read_until_sentinel() -> None:
            nonlocal buf
            while True:
                chunk = mon.recv(1 << 20)
                if not chunk:
                    return
                buf += chunk
                if sentinel.encode() in buf:
                    return

        reader = threading.Thread(target=read_until_sentinel, daemon=True)
        reader.start()
        time.sleep(0.2)
        for _ in range(requests):
            req = urllib.request.Request(  # noqa: S310 - loopback only
                target_url, data=body, headers=dict(headers), method="POST"
            )
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
                resp.read()
        with _connect(url) as other:
            _command(other, "ECHO", sentinel)
        reader.join(30.0)
        lines = buf.decode(errors="replace").split("\r\n")
    network: Counter[str] = Counter()
    scripted: Counter[str] = Counter()
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        who, cmd = m.group(1), m.group(2).lower()
        if who == "lua":
            scripted[cmd] += 1
        elif cmd not in _OWN:
            network[cmd] += 1

    def per(counts: Counter[str]) -> dict[str, float]:
        return {k: v / requests for k, v in counts.most_common()}

    return {
        "requests": requests,
        "network_per_req": sum(network.values()) / requests,
        "scripted_per_req": sum(scripted.values()) / requests,
        "network": per(network),
        "scripted": per(scripted),
    }

"""Load generators: wrk (closed loop, C, one thread on its own core) and a streaming probe.

wrk drives every throughput and latency figure. A Lua script sets the POST body and headers
and prints one JSON line of results from ``done``; it defines no per-response callback, which
would make wrk itself slower. Answers are checked once before each run (``preflight``), since
wrk only counts non-2xx statuses as errors.

The streaming probe (aiohttp, one stream at a time) measures what wrk cannot: the time to the
first SSE event.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testkit.procs import pinned

WRK_INSTALL_HINT = "wrk is not installed: apt-get install -y wrk (Debian/Ubuntu)"

_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(WRK_INSTALL_HINT)
    return path


def write_script(path: Path, body: bytes, headers: Mapping[str, str]) -> Path:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    path.write_text(_LUA.format(body=body.decode(), headers=lines))
    return path


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, cores: str | None
) -> WrkResult:
    argv = [
        require_wrk(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(
        pinned(argv, cores), capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        errors=raw["errors"],
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
    )


def preflight(url: str, body: bytes, headers: Mapping[str, str], expect: bytes) -> None:
    """One request by hand: it must answer 200 with ``expect`` in the body, or we stop."""
    request = urllib.request.Request(url, body, dict(headers), method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
        answer = resp.read()
        if resp.status != 200 or expect not in answer:
            raise RuntimeError(f"{url} answered {resp.status}: {answer[:500]!r}")


@dataclass(frozen=True)
class StreamProbeResult:
    streams: int
    events: int
    ttfe_p50_ms: float
    ttfe_p99_ms: float
    stream_p50_ms: float


# An SSE event ends at a blank line, in any of the three line endings the format allows
# (the broker frames its events with CRLF, the benchmark's upstream with LF).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


async def _one_stream(
    session: object, url: str, body: bytes, headers: Mapping[str, str]
) -> tuple[float, float, int]:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    start = time.perf_counter()
    first = 0.0
    buf = b""
    async with session.post(url, data=body, headers=dict(headers)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {(await resp.read())[:300]!r}")
        async for chunk in resp.content.iter_any():
            buf += chunk
            if not first and _EVENT_END.search(buf):
                first = time.perf_counter()
    end = time.perf_counter()
    return first - start, end - start, buf.count(b"data:")


async def _probe(
    url: str, body: bytes, headers: Mapping[str, str], seconds: float
) -> list[tuple[float, float, int]]:
    import aiohttp

    samples = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for _ in range(20):  # warm the connection and both ends' code paths
            await _one_stream(session, url, body, headers)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            samples.append(await _one_stream(session, url, body, headers))
    return samples


def stream_probe(
    url: str, body: bytes, headers: Mapping[str, str], seconds: float
) -> StreamProbeResult:
    """Streams one after another for ``seconds``: time to first event and whole-stream time."""
    samples = asyncio.run(_probe(url, body, headers, seconds))
    firsts = sorted(s[0] for s in samples)
    return StreamProbeResult(
        streams=len(samples),
        events=sum(s[2] for s in samples),
        ttfe_p50_ms=statistics.median(firsts) * 1000,
        ttfe_p99_ms=firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))] * 1000,
        stream_p50_ms=statistics.median(s[1] for s in samples) * 1000,
    )

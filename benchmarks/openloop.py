"""An open-loop HTTP/1.1 load generator: a fixed POST at a fixed rate, latency from intended time.

    python -m benchmarks.openloop --url URL --rate R --seconds S [--arrivals poisson]

wrk is closed loop: a slow answer delays the next request, so it cannot hold a rate and its
percentiles miss the requests a stall kept from being sent (coordinated omission). Here every
request has an intended send time fixed in advance (uniform or Poisson arrivals); it goes out on
an idle keep-alive connection, or waits for one while the pool grows (up to ``max_connections``),
and its latency runs from the intended time to the end of the answer. Waiting for a connection,
connecting, and the generator's own timer lateness all count against the system under test,
so the figures can only err on the pessimistic side; the direct-upstream floor shows how much.

Raw asyncio Protocols on uvloop keep the generator's CPU per request small; an HTTP client
library (aiohttp, httpx) would cost several times more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import cast
from urllib.parse import urlsplit

from benchmarks.http1 import MalformedResponseError, Response, ResponseParser
from benchmarks.measure import UNARY_BODY

DEFAULT_HEADERS = {"Content-Type": "application/json", "A2A-Version": "1.0"}
ARRIVALS = ("uniform", "poisson")


def arrivals(rate: float, seconds: float, kind: str = "uniform", seed: int = 1) -> Iterator[float]:
    """Intended send times, in seconds from the start, in order, all in ``[0, seconds)``."""
    if rate <= 0:
        return
    if kind == "uniform":
        yield from (n / rate for n in range(math.ceil(rate * seconds)) if n / rate < seconds)
        return
    if kind != "poisson":
        raise ValueError(f"arrivals must be one of {ARRIVALS}, not {kind!r}")
    rng, at = random.Random(seed), 0.0
    while (at := at + rng.expovariate(rate)) < seconds:
        yield at


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of an ascending list; 0.0 if empty."""
    if not ordered:
        return 0.0
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass(frozen=True)
class Plan:
    """What to send, how fast, for how long."""

    url: str
    rate: float
    seconds: float
    body: bytes = UNARY_BODY
    headers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_HEADERS))
    warmup: float = 1.0  # sent at the same rate, not counted
    arrivals: str = "uniform"
    max_connections: int = 256
    drain_s: float = 10.0  # after the window, how long answers may take before counting as lost
    seed: int = 1

    def request(self) -> bytes:
        parts = urlsplit(self.url)
        head = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                f"Host: {parts.netloc}", f"Content-Length: {len(self.body)}",
                *(f"{k}: {v}" for k, v in self.headers.items())]  # fmt: skip
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


@dataclass(frozen=True)
class OpenLoopResult:
    target_rps: float
    arrivals: str
    seconds: float
    count: int  # requests whose intended send time fell in the measured window
    errors: int  # non-2xx, connection errors, and timeouts (no answer within drain_s)
    timeouts: int
    achieved_rps: float  # answers received during the window, per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    connections: int  # most connections open at once
    gen_cpu_util: float  # the generator's CPU seconds per wall second during the window
    gen_cpu_us_per_req: float
    dispatch_lag_p99_ms: float  # how late the generator's timer sent requests (its own share)
    dispatch_lag_max_ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"target {self.target_rps:,.0f} req/s achieved {self.achieved_rps:,.0f}  "
            f"p50 {self.p50_ms:.2f} p90 {self.p90_ms:.2f} p99 {self.p99_ms:.2f} "
            f"p99.9 {self.p999_ms:.2f} max {self.max_ms:.2f} ms  n={self.count} "
            f"errors {self.errors} ({self.timeouts} timeouts)  conns {self.connections}  "
            f"generator cpu {self.gen_cpu_util:.0%} ({self.gen_cpu_us_per_req:.0f} us/req, "
            f"timer lag p99 {self.dispatch_lag_p99_ms:.2f} ms)"
        )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Recorder:
    """Each answer's latency from its intended send time, for requests of the window only."""

    def __init__(self) -> None:
        self.window = (math.inf, math.inf)
        self.latencies: list[float] = []
        self.errors = self.timeouts = 0
        self.in_window = 0  # answers (of any request) that arrived during the window
        self.expected = -1  # requests of the window, once all are sent
        self.all_answered = asyncio.Event()

    def expect(self, count: int) -> None:
        self.expected = count
        if len(self.latencies) >= count:
            self.all_answered.set()

    def record(self, at: float, done: float, ok: bool) -> None:
        start, end = self.window
        if start <= done < end:
            self.in_window += 1
        if at >= start:
            self.latencies.append(done - at)
            self.errors += not ok
            if len(self.latencies) == self.expected:
                self.all_answered.set()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.at: float | None = None  # the in-flight request's intended send time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.pool.ready(self)

    def send(self, at: float) -> None:
        assert self.transport is not None
        self.at = at
        self.transport.write(self.pool.request)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except MalformedResponseError:
            responses = [Response(0, b"", True)]
        for response in responses:
            self._answered(response)

    def _answered(self, response: Response) -> None:
        if self.at is None:
            return  # nothing asked: ignore
        at, self.at = self.at, None
        self.pool.recorder.record(at, time.perf_counter(), 200 <= response.status < 300)
        if response.close:
            assert self.transport is not None
            self.transport.close()
        else:
            self.pool.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        last = self.parser.feed_eof()
        if last is not None and self.at is not None:
            self._answered(last._replace(close=True))
        if self.at is not None:
            self.pool.recorder.record(self.at, time.perf_counter(), False)
            self.at = None
        self.pool.lost(self)


class _Pool:
    """Keep-alive connections, one request in flight on each; grows while requests wait."""

    def __init__(self, plan: Plan, recorder: _Recorder) -> None:
        parts = urlsplit(plan.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = plan.request()
        self.recorder = recorder
        self.max = plan.max_connections
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()
        self.pending: deque[float] = deque()  # intended times of requests waiting for a connection
        self.size = self.peak = 0  # connections open or opening
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, at: float) -> None:
        if self.idle:
            self.idle.pop().send(at)  # the most recently used: its socket is warm
        else:
            self.pending.append(at)
            self.grow()

    def grow(self) -> None:
        if self.size < self.max:
            self.size += 1
            self.peak = max(self.peak, self.size)
            task = asyncio.get_running_loop().create_task(self._open())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self.size -= 1
            if self.pending:  # the connection this request waited for failed: count it lost
                self.recorder.record(self.pending.popleft(), time.perf_counter(), False)

    def ready(self, conn: _Connection) -> None:
        self.open.add(conn)
        if self.pending:
            conn.send(self.pending.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.size -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.pending:
            self.grow()

    def waiting(self) -> list[float]:
        """Intended times of every request not yet answered."""
        return list(self.pending) + [c.at for c in self.open if c.at is not None]

    def abandon(self) -> list[float]:
        """Close every connection; the intended times of the requests left unanswered."""
        left = self.waiting()
        self.pending.clear()
        for conn in list(self.open):
            conn.at = None
            if conn.transport is not None:
                conn.transport.close()
        return left


_TIMER_TICK_S = 0.001
WindowHook = Callable[[str], None]  # called with "start" and "end" of the measured window


async def _run(plan: Plan, hook: WindowHook | None) -> OpenLoopResult:
    recorder = _Recorder()
    pool = _Pool(plan, recorder)
    lags: list[float] = []
    t0 = time.perf_counter() + 0.05
    start, end = t0 + plan.warmup, t0 + plan.warmup + plan.seconds
    cpu0 = 0.0
    for offset in arrivals(plan.rate, plan.warmup + plan.seconds, plan.arrivals, plan.seed):
        at = t0 + offset
        # uvloop's timers tick in whole milliseconds (a shorter sleep would only spin) and may
        # fire up to one tick early: such a request is timed from when it actually went out
        if (delay := at - time.perf_counter()) > _TIMER_TICK_S:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        sent_at = min(at, now)  # stamps never decrease: the window is from its first one on
        if at >= start:
            if not lags:
                recorder.window, cpu0 = (sent_at, end), _cpu_s()
                if hook:
                    hook("start")
            lags.append(now - sent_at)
        pool.submit(sent_at)
    recorder.expect(len(lags))
    await asyncio.sleep(max(end - time.perf_counter(), 0.0))
    cpu = _cpu_s() - cpu0
    if hook:
        hook("end")
    await _drain(pool, recorder, recorder.window[0], plan.drain_s)
    return _result(plan, recorder, peak=pool.peak, cpu=cpu, lags=sorted(lags))


async def _drain(pool: _Pool, recorder: _Recorder, start: float, seconds: float) -> None:
    """Wait for the window's answers; those still missing after ``seconds`` are timeouts."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await recorder.all_answered.wait()
    lost = [at for at in pool.abandon() if at >= start]
    recorder.timeouts = len(lost)
    now = time.perf_counter()
    for at in lost:  # their latency is at least this long: keep them in the percentiles
        recorder.record(at, now, False)
    await asyncio.sleep(0)  # let the transports finish closing


def _result(
    plan: Plan, rec: _Recorder, *, peak: int, cpu: float, lags: list[float]
) -> OpenLoopResult:
    ms, sent = sorted(x * 1000 for x in rec.latencies), len(lags)
    return OpenLoopResult(
        target_rps=plan.rate, arrivals=plan.arrivals, seconds=plan.seconds, count=sent,
        errors=rec.errors, timeouts=rec.timeouts, achieved_rps=rec.in_window / plan.seconds,
        p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90), p99_ms=percentile(ms, 99),
        p999_ms=percentile(ms, 99.9), max_ms=ms[-1] if ms else 0.0, connections=peak,
        gen_cpu_util=cpu / plan.seconds, gen_cpu_us_per_req=cpu / sent * 1e6 if sent else 0.0,
        dispatch_lag_p99_ms=percentile(lags, 99) * 1000,
        dispatch_lag_max_ms=(lags[-1] if lags else 0.0) * 1000,
    )  # fmt: skip


def run(plan: Plan, hook: WindowHook | None = None) -> OpenLoopResult:
    """Drive ``plan.url`` open loop on a fresh uvloop event loop; blocks until done.

    ``hook`` is called (on the loop, so it must be quick) as the measured window starts and ends.
    """
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(plan, hook))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.openloop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent, not counted")
    parser.add_argument("--arrivals", choices=ARRIVALS, default="uniform")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (default: Content-Type and A2A-Version)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    headers = dict(DEFAULT_HEADERS)
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    plan = Plan(args.url, args.rate, args.seconds, headers=headers, warmup=args.warmup,
                arrivals=args.arrivals, max_connections=args.max_connections)  # fmt: skip
    result = run(plan)
    print(json.dumps(result.as_dict()) if args.json else result.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

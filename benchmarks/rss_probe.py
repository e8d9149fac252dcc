"""Does the broker's RSS follow requests, connections or concurrency? A short probe.

``python -m benchmarks.rss_probe [--store redis|memory]`` starts the harness's upstream and one
broker with a budget (as scenario e; the redis store on a private redis-server), then reads the
broker's RSS (its process tree):

* after 500 warm-up requests, and after each 3,000 more on one keep-alive connection (four
  times);
* after each 3,000 more on a fresh connection each (four times);
* after each 10,000 more from eight keep-alive connections at once (eight times).

Prints one line per reading. ``docs/scaling.md`` (the soak) quotes it.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.measure import UNARY_BODY
from benchmarks.proc_stats import rss_bytes
from benchmarks.targets import Placement, broker, environment


def _requests(url: str, headers: Mapping[str, str], count: int, *, fresh: bool = False) -> None:
    parts = urlsplit(url)
    conn = None
    for _ in range(count):
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        conn.request("POST", parts.path, UNARY_BODY, dict(headers))
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url} answered {answer.status}")
        if fresh:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rss_probe",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--store", choices=("redis", "memory"), default="redis")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rss-probe-") as tmp, environment(
        Path(tmp), Placement(sut=None, rest=None), 10
    ) as env, broker(env, store=args.store) as target:
        pid, url, headers = target.process.pid, target.url, target.headers

        def show(what: str) -> None:
            print(f"{what:<40} broker RSS {rss_bytes(pid) / 1e6:6.1f} MB", flush=True)

        _requests(url, headers, 500)
        show("500 warm-up requests")
        for n in range(1, 5):
            _requests(url, headers, 3000)
            show(f"+{3000 * n:,} on one connection")
        for n in range(1, 5):
            _requests(url, headers, 3000, fresh=True)
            show(f"+{3000 * n:,} on a fresh connection each")
        for n in range(1, 9):
            threads = [threading.Thread(target=_requests, args=(url, headers, 1250))
                       for _ in range(8)]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            show(f"+{10_000 * n:,} from eight connections at once")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-process tallies of counters and histograms, written into prometheus-client's values in
batches (decision 0052).

A prometheus-client increment takes a lock and, in multiprocess mode, checks the process id and
packs the value into shared memory: one request's dozen increments cost several times what the
rest of its metrics work does. Here a request adds to plain dictionaries; the sums go into the
real values at most ``FLUSH_S`` later (on the event loop), and at once before this process
answers a scrape. A scrape answered by another worker may miss the last ``FLUSH_S`` of this one.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

FLUSH_S = 0.25

_counts: dict[Any, float] = {}
# A histogram child: [sum, count in bucket 0, count in bucket 1, ...]
_observed: dict[Any, list[float]] = {}
_bounds: dict[Any, tuple[float, ...]] = {}
_scheduled = False


def add(child: Any, amount: float = 1.0) -> None:
    """``child.inc(amount)``, batched."""
    _counts[child] = _counts.get(child, 0.0) + amount
    if not _scheduled:  # checked here: a call per add and observe costs more than its work
        _schedule()


def observe(child: Any, value: float) -> None:
    """``child.observe(value)``, batched."""
    pending = _observed.get(child)
    if pending is None:
        bounds = _bounds[child] = tuple(child._upper_bounds)  # its buckets (private, stable)
        pending = _observed[child] = [0.0] * (len(bounds) + 1)
    pending[0] += value
    pending[1 + bisect_left(_bounds[child], value)] += 1
    if not _scheduled:
        _schedule()


def flush() -> None:
    """Write every pending sum into prometheus-client's values now."""
    global _scheduled  # noqa: PLW0603 - one flush pending per process
    _scheduled = False
    counts, observed = dict(_counts), dict(_observed)
    _counts.clear()
    _observed.clear()
    for child, amount in counts.items():
        child.inc(amount)
    for child, (total, *buckets) in observed.items():
        child._sum.inc(total)
        for bucket, hits in zip(child._buckets, buckets, strict=True):
            if hits:
                bucket.inc(hits)


def _schedule() -> None:
    global _scheduled  # noqa: PLW0603
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop (a tool, a test): no batching
        flush()
        return
    _scheduled = True
    loop.call_later(FLUSH_S, flush)

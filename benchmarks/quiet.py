"""Other work on the machine: measured during each point, and waited out before it.

On a shared 2-core machine another process's burst moves every figure. Each point records the
CPU used by processes that are not part of the run ("foreign" CPU, in cores); before a point
the run waits, within a bound, for the machine to be quiet.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable

from benchmarks.proc_stats import Measured, busy_cpu_seconds, cpu_seconds

QUIET_CORES = 0.15  # foreign CPU below this (in cores) counts as quiet
SAMPLE_S = 1.0


def _own_cpu(children: Iterable[Measured]) -> float:
    """CPU seconds of the harness, its finished children (wrk) and its running servers."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total + sum(sum(cpu_seconds(child.pid)) for child in children)


class ForeignLoad:
    """Foreign CPU over an interval: ``start()``, do the work, then ``cores()``."""

    def __init__(self, children: Callable[[], Iterable[Measured]]) -> None:
        self._children = children
        self._busy0 = self._own0 = self._wall0 = 0.0

    def start(self) -> None:
        self._busy0, self._own0 = busy_cpu_seconds(), _own_cpu(self._children())
        self._wall0 = time.monotonic()

    def cores(self) -> float:
        busy = busy_cpu_seconds() - self._busy0
        own = _own_cpu(self._children()) - self._own0
        wall = time.monotonic() - self._wall0
        return max(busy - own, 0.0) / wall if wall > 0 else 0.0


def wait_for_quiet(children: Callable[[], Iterable[Measured]], max_wait_s: float) -> float:
    """Sample until foreign CPU is under QUIET_CORES or ``max_wait_s`` passes; the last sample."""
    deadline = time.monotonic() + max_wait_s
    load = ForeignLoad(children)
    while True:
        load.start()
        time.sleep(SAMPLE_S)
        foreign = load.cores()
        if foreign < QUIET_CORES or time.monotonic() >= deadline:
            return foreign

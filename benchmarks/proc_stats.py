"""What a benchmark reads from /proc: CPU seconds (utime + stime) and resident memory, each summed
over a process and its descendants (uvicorn's workers are children of its supervisor), and the
whole machine's busy CPU time. The processes themselves are started by ``testkit.procs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Measured(Protocol):
    """A child of the run whose CPU counts as the run's own (a ``Process``, a ``RedisServer``)."""

    @property
    def pid(self) -> int: ...


def cpu_seconds(root: int) -> tuple[float, float]:
    """User and system CPU seconds of ``root``'s process tree so far."""
    times = [_cpu_seconds(pid) for pid in process_tree(root)]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def rss_bytes(root: int) -> int:
    """Resident memory of ``root``'s process tree now."""
    return sum(_rss_bytes(pid) for pid in process_tree(root))


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant that is alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _stat_fields(int(entry))
            if ppid:
                children.setdefault(int(ppid[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1]); [] if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw[raw.rindex(")") + 2 :].split()


def _cpu_seconds(pid: int) -> tuple[float, float]:
    fields = _stat_fields(pid)
    if not fields:
        return 0.0, 0.0
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS  # utime, stime


def _rss_bytes(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[21]) * _PAGE if fields else 0


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / _TICKS  # guest time is already counted in user

"""Child processes for a benchmark run: pinned to cores, ready-checked, stopped for sure.

Also the two figures read from /proc: CPU seconds (utime + stime) and resident memory, each
summed over a process and its descendants (uvicorn's workers are children of its supervisor).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(argv: Sequence[str], cores: str | None) -> list[str]:
    """``argv`` under ``taskset -c cores`` (taskset execs, so the pid stays the program's)."""
    if cores is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", cores, *argv]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessStartError(RuntimeError):
    """The child exited, or did not answer its ready URL in time."""


class Child:
    """One server process; its output goes to ``log``."""

    def __init__(self, name: str, argv: Sequence[str], popen: subprocess.Popen[bytes], log: Path):
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log = log

    @classmethod
    def launch(
        cls,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        cores: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log = log_dir / f"{name}.log"
        full = pinned(argv, cores)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only async-signal-safe calls
            )
        return cls(name, full, popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        """Poll ``url`` until it answers 2xx; raise if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessStartError(f"{self.name} exited early:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1.0) as resp,  # noqa: S310 - loopback
            ):
                if 200 <= resp.status < 300:
                    return
            time.sleep(0.05)
        raise ProcessStartError(f"{self.name} not ready at {url} in {timeout}s:\n{self.log_tail()}")

    def wait_port(self, port: int, timeout: float = 10.0) -> None:
        """Wait until something accepts TCP connections on 127.0.0.1:port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessStartError(f"{self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            time.sleep(0.05)
        raise ProcessStartError(f"{self.name} not listening on {port}:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU seconds of the process tree so far."""
        times = [_cpu_seconds(pid) for pid in process_tree(self.pid)]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def rss_bytes(self) -> int:
        return sum(_rss_bytes(pid) for pid in process_tree(self.pid))


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

"""A private redis-server on a free loopback port: started, paused, killed, restarted, stopped.

Without ``data_dir`` it is ``testkit.redis_process``'s server (no persistence, starts empty);
with one it persists to an fsynced append-only file in that folder, as production runs it, so
what it acknowledged survives SIGKILL and ``start`` again reloads it on the same port.

    with RedisServer.running() as server:
        config.use_redis(server.url, key_prefix="x")
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.procs import HOST, free_port
from testkit.redis_process import redis_server_binary, start_redis_server, stop_redis_server

START_TIMEOUT_S = 10.0


def find_redis_server() -> str | None:
    """The redis-server binary the tests use, or None when there is none."""
    try:
        return redis_server_binary()
    except pytest.skip.Exception:
        return None


def parse_cores(cores: str) -> set[int]:
    """``"1"``, ``"0,2"``, ``"0-3"`` as a set of CPU numbers (taskset's list syntax)."""
    found: set[int] = set()
    for part in cores.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def pin_process(pid: int, cores: str) -> None:
    """Pin every thread of ``pid`` to ``cores`` (as ``taskset -a -p``)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), parse_cores(cores))


class RedisServer:
    def __init__(
        self, port: int | None = None, *, data_dir: Path | None = None, cores: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.cores = cores
        self.process: subprocess.Popen[bytes] | None = None
        self.log = (data_dir / "redis.log") if data_dir else None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, port: int | None = None, *, data_dir: Path | None = None, cores: str | None = None
    ) -> Iterator[RedisServer]:
        server = cls(port, data_dir=data_dir, cores=cores)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, **options)  # type: ignore[arg-type]

    def start(self) -> None:
        if self.data_dir is None:
            self.process = start_redis_server(self.port)
        else:
            self.process = self._start_persistent(self.data_dir)
        if self.cores is not None:
            pin_process(self.process.pid, self.cores)

    def _start_persistent(self, data_dir: Path) -> subprocess.Popen[bytes]:
        assert self.log is not None
        argv = [
            redis_server_binary(),
            *("--bind", HOST, "--port", str(self.port), "--dir", str(data_dir)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
        ]
        data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError):  # BusyLoadingError is one
                    if client.ping():  # a server still loading its file answers LOADING
                        return process
                if process.poll() is not None or time.monotonic() > deadline:
                    stop_redis_server(process)
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start on {self.port}:\n{tail}")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write; connections are refused at once."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: a stalled server, whose commands time out."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_redis_server(self.process)

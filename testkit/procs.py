"""Child processes on loopback ports: started, ready-checked, logged to a file, stopped for sure.

General purpose: nothing here knows about the broker or A2A.

    port = free_port()
    with Process.start(["python", "-m", "x", "--port", str(port)], name="x",
                       ready_url=f"{local_url(port)}/healthz") as proc:
        ...  # proc.output(): everything it printed so far

A child's stdout and stderr go to ``<log_dir>/<name>.log`` (``-2``, ``-3``... when that name is
taken; default: a temporary file that ``stop`` removes). A child that exits or does not become
ready in time raises ``ProcessStartError`` with the tail of its log. On Linux a child also gets
SIGTERM if the process that started it dies, so no server outlives a crashed run; ``cores`` pins
it (``taskset``) and ``open_files`` limits its open files, as ``ulimit -n`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1
# Loopback only: never through a proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another process could still
    take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def local_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def closed_url() -> str:
    """A base URL nothing listens on (the card of a caller-only identity points there)."""
    return local_url(free_port())


def pinned(argv: Sequence[str], cores: str | None) -> list[str]:
    """``argv`` under ``taskset -c cores`` (taskset execs, so the pid stays the program's)."""
    if cores is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", cores, *argv]


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def _in_child(open_files: int | None) -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if open_files is not None:  # as `ulimit -n open_files` would
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))


def _log_file(log_dir: str | Path | None, name: str) -> tuple[Path, bool]:
    """A new log file for ``name`` and whether it is temporary (removed by ``stop``)."""
    if log_dir is None:
        fd, temporary = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        os.close(fd)
        return Path(temporary), True
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = folder / (f"{name}.log" if n == 1 else f"{name}-{n}.log")
        with contextlib.suppress(FileExistsError):
            path.touch(exist_ok=False)
            return path, False
    raise RuntimeError(f"no free log file name for {name} in {folder}")


class ProcessStartError(RuntimeError):
    """The child exited, or did not answer in time; the message ends with its log's tail."""


class Process:
    """One child process; use ``start`` (a context manager) or ``launch`` + ``wait_ready`` +
    ``stop`` (to start several at once)."""

    def __init__(
        self, name: str, argv: Sequence[str], popen: subprocess.Popen[bytes], log: Path, *,
        temporary_log: bool,
    ) -> None:  # fmt: skip
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log = log
        self._temporary_log = temporary_log

    @classmethod
    def launch(
        cls,
        argv: Sequence[str],
        *,
        name: str = "",
        log_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = REPO_ROOT,
        cores: str | None = None,
        open_files: int | None = None,
    ) -> Process:
        """Start the child and return at once; ``env`` is added to this process's environment."""
        name = name or Path(argv[0]).name
        log, temporary = _log_file(log_dir, name)
        full = pinned(argv, cores)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                preexec_fn=functools.partial(_in_child, open_files),  # noqa: PLW1509
            )
        return cls(name, full, popen, log, temporary_log=temporary)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        argv: Sequence[str],
        *,
        ready_url: str,
        timeout: float = START_TIMEOUT_S,
        name: str = "",
        log_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = REPO_ROOT,
        cores: str | None = None,
        open_files: int | None = None,
    ) -> Iterator[Process]:
        """Launch, wait until ``ready_url`` answers 2xx, yield; stopped on the way out."""
        proc = cls.launch(
            argv, name=name, log_dir=log_dir, env=env, cwd=cwd, cores=cores, open_files=open_files
        )
        with proc.stopped_after():
            proc.wait_ready(ready_url, timeout=timeout)
            yield proc

    @contextlib.contextmanager
    def stopped_after(self) -> Iterator[Process]:
        """Stop this process when the block ends, however it ends."""
        try:
            yield self
        finally:
            self.stop()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, url: str, *, timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``url`` until it answers 2xx; raise if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                _DIRECT.open(url, timeout=1.0) as resp,
            ):
                if 200 <= resp.status < 300:
                    return
            time.sleep(0.05)  # another process's readiness cannot be awaited, only polled
        raise ProcessStartError(f"{self.name} not ready at {url} in {timeout}s:\n{self.log_tail()}")

    def wait_port(self, port: int, *, timeout: float = 10.0) -> None:
        """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
                return
            time.sleep(0.05)
        raise ProcessStartError(f"{self.name} not listening on {port}:\n{self.log_tail()}")

    def _check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ProcessStartError(
                f"{self.name} ({' '.join(self.argv)}) exited early with code {code}:\n"
                f"{self.log_tail()}"
            )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGCONT)  # a paused (SIGSTOP) child ignores TERM
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._temporary_log:
            self.log.unlink(missing_ok=True)

    def output(self) -> str:
        """Everything the child wrote to stdout and stderr so far."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:] or "(no output)"


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


@contextlib.contextmanager
def all_stopped(children: list[S]) -> Iterator[list[S]]:
    """Stop everything in ``children`` (processes, services, brokers; in reverse order) when the
    block ends, however it ends; launch into the list inside the block, so a failed start
    leaves nothing running."""
    try:
        yield children
    finally:
        for child in reversed(children):
            child.stop()


class Service:
    """A program we start that serves HTTP on a port of its own (an agent, a fake provider)."""

    def __init__(self, url: str, process: Process, ready_path: str) -> None:
        self.url = url
        self.process = process
        self.ready_path = ready_path

    @property
    def log(self) -> Path:
        return self.process.log

    def wait_ready(self, *, timeout: float = START_TIMEOUT_S) -> None:
        self.process.wait_ready(self.url + self.ready_path, timeout=timeout)

    def stop(self) -> None:
        self.process.stop()


def launch_service(
    module: str,
    *args: str,
    name: str,
    log_dir: str | Path | None = None,
    port: int | None = None,
    ready_path: str = "/_ready",
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = REPO_ROOT,
    cores: str | None = None,
) -> Service:
    """``python -m module *args --port PORT`` (a free port by default); does not wait."""
    port = port or free_port()
    argv = python_module(module, *args, "--port", str(port))
    process = Process.launch(argv, name=name, log_dir=log_dir, env=env, cwd=cwd, cores=cores)
    return Service(local_url(port), process, ready_path)


@contextlib.contextmanager
def start_services(services: list[Service]) -> Iterator[list[Service]]:
    """Wait until every service (launched already, so they start together) is ready; stop them
    all when the block ends, or at once if one fails to start."""
    try:
        for service in services:
            service.wait_ready()
        yield services
    finally:
        for service in reversed(services):
            service.stop()


async def everyone(processes: list[asyncio.subprocess.Process], say: bytes | None) -> list[bytes]:
    """Tell every process ``say`` on its stdin (if any), then read one line from each stdout:
    the lock-step of tests that race several processes."""
    for process in processes:
        if say is not None:
            assert process.stdin is not None  # started with stdin=PIPE
            process.stdin.write(say)
            await process.stdin.drain()
    lines = []
    for process in processes:
        assert process.stdout is not None  # started with stdout=PIPE
        lines.append((await process.stdout.readline()).strip())
    return lines

"""Start a subprocess on a free loopback port, wait until an HTTP URL answers, stop it for sure.

General purpose: nothing here knows about the broker or A2A.

    with ServerProcess.start(["python", "-m", "x", "--port", str(port)],
                             ready_url=f"http://127.0.0.1:{port}/healthz") as proc:
        ...

The child's stdout and stderr go to a log file in ``log_dir`` (default: a new temporary file that
``stop`` removes); a child that exits or does not become ready in time raises ``ProcessStartError``
with the tail of that log. On Linux the child also gets
SIGTERM if the test process dies, so no server outlives the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(open_files: int | None = None) -> None:  # in the child, before exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if open_files is not None:  # as `ulimit -n open_files` would
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))


class ProcessStartError(RuntimeError):
    """The child exited, or did not answer its ready URL in time."""


class ServerProcess:
    """A child process serving HTTP; use ``start`` (a context manager) or ``launch`` + ``stop``."""

    def __init__(
        self, argv: Sequence[str], popen: subprocess.Popen[bytes], log: Path, *, own_log: bool
    ) -> None:
        self.argv = list(argv)
        self.popen = popen
        self.log = log
        self._own_log = own_log

    @classmethod
    def launch(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_dir: str | Path | None = None,
        name: str = "",
        open_files: int | None = None,
    ) -> ServerProcess:
        """Start the child, not waiting; then call ``wait_ready`` (so several can start at once).

        ``name`` starts the log file's name (default: the program's name); ``open_files``
        limits the child's open files (soft and hard), as ``ulimit -n`` would.
        """
        prefix = (name or Path(argv[0]).name) + "-"
        fd, log_name = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=log_dir)
        with os.fdopen(fd, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                preexec_fn=functools.partial(_die_with_parent, open_files),  # noqa: PLW1509
            )
        return cls(argv, popen, Path(log_name), own_log=log_dir is None)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        argv: Sequence[str],
        *,
        ready_url: str,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_dir: str | Path | None = None,
        name: str = "",
        timeout: float = 20.0,
        open_files: int | None = None,
    ) -> Iterator[ServerProcess]:
        proc = cls.launch(
            argv, env=env, cwd=cwd, log_dir=log_dir, name=name, open_files=open_files
        )
        try:
            proc.wait_ready(ready_url, timeout=timeout)
            yield proc
        finally:
            proc.stop()

    def wait_ready(self, url: str, *, timeout: float = 20.0) -> None:
        """Poll ``url`` until it answers 2xx; raise if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise ProcessStartError(f"{self.argv} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).is_success:
                        return
                time.sleep(0.05)  # another process's readiness cannot be awaited, only polled
        raise ProcessStartError(f"{self.argv} not ready at {url} in {timeout}s:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._own_log:
            self.log.unlink(missing_ok=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

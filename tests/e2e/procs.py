"""Run a server process for a test: start it, wait until a URL answers 200, always stop it.

    with running_process([sys.executable, "-m", "my.server", "--port", str(port)],
                         f"http://127.0.0.1:{port}/healthz", env=repo_env()) as proc:
        ...  # proc.output() is everything the process printed so far

The process's stdout and stderr go to a temporary file, shown in the error when it fails to start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class RunningProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


class ProcessStartError(RuntimeError):
    """The process exited or did not answer in time; the message includes its output."""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process could still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def repo_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment plus ``extra``, with the repository importable and output unbuffered."""
    env = {**os.environ, **(extra or {}), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def running_process(
    command: Sequence[str],
    ready_url: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path = REPO_ROOT,
    start_timeout_s: float = 20.0,
    stop_timeout_s: float = 5.0,
) -> Iterator[RunningProcess]:
    """Start ``command``, wait until GET ``ready_url`` answers 200, and stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="procs-") as tmp:
        log = Path(tmp) / "output.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )
        running = RunningProcess(process, log)
        try:
            wait_until_ready(running, ready_url, start_timeout_s)
            yield running
        finally:
            stop(process, stop_timeout_s)


def wait_until_ready(running: RunningProcess, url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; raise ProcessStartError if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = running.process.poll()
        if code is not None:
            raise ProcessStartError(f"exited with code {code}:\n{running.output()}")
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise ProcessStartError(f"{url} did not answer in {timeout_s} s:\n{running.output()}")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """Terminate ``process``; kill it if it is still running after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

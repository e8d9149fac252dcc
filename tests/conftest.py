"""Fixtures every test folder may use: real Redis servers and a private key prefix per test.

Three topologies, each started once per session from the same redis-server binary (or taken
from the environment, as a CI with servers of its own would give them): ``redis_url``
(standalone; ``$REDIS_URL``), ``redis_cluster_url`` (three masters; ``$REDIS_CLUSTER_URL``, a
node of an existing cluster) and ``redis_sentinel`` (a primary, a replica and a sentinel;
``$REDIS_SENTINEL_URL`` and ``$REDIS_SENTINEL_SERVICE``). ``redis_store_settings`` gives
``[store]`` settings for any of them under a key prefix of the test's own.

No test asks a DNS server anything: ``_no_outside_names`` answers every name but the loopback
ones as unknown, at once (the outside world's DNS is faked, as its LLM providers are).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from broker.settings import StoreSettings
from broker.stores.redis_client import seed_nodes
from testkit.dns import local_only_getaddrinfo
from testkit.procs import free_port
from testkit.redis_process import (
    RedisMode,
    start_redis_cluster,
    start_redis_server,
    start_sentinel_set,
    stop_redis_server,
)

REDIS_URL_ENV = "REDIS_URL"
REDIS_CLUSTER_URL_ENV = "REDIS_CLUSTER_URL"
REDIS_SENTINEL_URL_ENV = "REDIS_SENTINEL_URL"
REDIS_SENTINEL_SERVICE_ENV = "REDIS_SENTINEL_SERVICE"


@pytest.fixture(scope="session", autouse=True)
def _no_outside_names() -> Iterator[None]:
    """Every test: in this process a name outside the machine does not resolve, and no DNS
    query leaves it (processes the tests start are given numeric loopback URLs only).

    The broker resolves the hosts of cards registered with names (the egress check at
    registration, ``check_registered_url``); the card fixtures name example.org hosts. Asking
    the machine's DNS server for them talked to the network and, when it answered late, cost a
    test 2 s of lookup and 3 s of teardown waiting for the lookup's thread. asyncio's and
    aiohttp's threaded resolvers call ``socket.getaddrinfo``; a test that needs a name to
    resolve fakes the loop's ``getaddrinfo`` itself (tests/unit/test_upstream_http11.py).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", local_only_getaddrinfo(socket.getaddrinfo))
        yield


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
    """$REDIS_URL if set; otherwise a redis-server started for this test session (each xdist
    worker is a session of its own, so each starts its own)."""
    if url := os.environ.get(REDIS_URL_ENV):
        yield url
        return
    with _private_redis() as url:
        yield url


@pytest.fixture(scope="module")
def private_redis_url() -> Iterator[str]:
    """A redis-server of this test module's own, even when $REDIS_URL is set: for tests that
    read or change what is server-wide (INFO counters, SCRIPT FLUSH), which a test running at
    the same time on a shared server would disturb, or be disturbed by."""
    with _private_redis() as url:
        yield url


@contextlib.contextmanager
def _private_redis() -> Iterator[str]:
    port = free_port()
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


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """$REDIS_CLUSTER_URL if set; otherwise a three-master cluster started for this session."""
    if url := os.environ.get(REDIS_CLUSTER_URL_ENV):
        yield url
        return
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(sentinel URLs, service): $REDIS_SENTINEL_URL and $REDIS_SENTINEL_SERVICE (default
    mymaster) if set; otherwise a primary, a replica and a sentinel started for this session."""
    if url := os.environ.get(REDIS_SENTINEL_URL_ENV):
        yield url, os.environ.get(REDIS_SENTINEL_SERVICE_ENV, "mymaster")
        return
    sentinel = start_sentinel_set(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield sentinel.url, sentinel.service
    finally:
        sentinel.stop()


@pytest.fixture
def redis_store_settings(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[RedisMode], StoreSettings]]:
    """``make(mode)``: [store] settings for that topology under a prefix of this test's own;
    every key under each prefix made is deleted after the test."""
    made: list[StoreSettings] = []

    def make(mode: RedisMode) -> StoreSettings:
        prefix = f"test-{uuid.uuid4().hex}"
        if mode == "standalone":
            settings = StoreSettings(
                backend="redis", redis_url=request.getfixturevalue("redis_url"), key_prefix=prefix
            )
        elif mode == "cluster":
            settings = StoreSettings(
                backend="redis", redis_mode="cluster",
                redis_url=request.getfixturevalue("redis_cluster_url"), key_prefix=prefix,
            )  # fmt: skip
        else:
            url, service = request.getfixturevalue("redis_sentinel")
            settings = StoreSettings(
                backend="redis", redis_mode="sentinel", redis_url=url,
                sentinel_service=service, key_prefix=prefix,
            )  # fmt: skip
        made.append(settings)
        return settings

    yield make
    for settings in made:
        delete_prefix(settings)


def sync_client(settings: StoreSettings) -> redis.Redis | redis.RedisCluster:
    """A blocking client for ``settings`` (any mode), for tests that look at keys directly."""
    if settings.redis_mode == "cluster":
        host, port = seed_nodes(settings.redis_url)[0]
        return redis.RedisCluster(host=host, port=port)
    if settings.redis_mode == "sentinel":
        sentinel = redis.Sentinel(seed_nodes(settings.redis_url))
        return sentinel.master_for(settings.sentinel_service)
    return redis.Redis.from_url(settings.redis_url)


def delete_prefix(settings: StoreSettings) -> None:
    """Delete every key under ``settings.key_prefix`` (one by one: a cluster's keys differ in
    slot)."""
    client = sync_client(settings)
    try:
        for key in list(client.scan_iter(match=f"{settings.key_prefix}:*", count=1000)):
            client.delete(key)
    finally:
        client.close()

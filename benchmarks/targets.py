"""The systems under test, each started on loopback and stopped in ``finally``.

Placement on a 2-core machine: the system under test on core 0; the upstream, Redis and wrk
share core 1 (``Placement``), so the broker competes with nothing but itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.upstream import JSONRPC_PATH, card
from testkit.brokers import BrokerProcess, broker_argv, launch_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import REPO_ROOT, Process, closed_url, free_port, local_url
from testkit.redis_server import RedisServer, find_redis_server

AGENT = "bench"
CALLER = "loadgen"


@dataclass(frozen=True)
class Placement:
    sut: str | None = "0"  # the proxy or broker
    rest: str | None = "1"  # upstream, Redis, wrk, the streaming probe


@dataclass(frozen=True)
class Target:
    """Where to send load, with which headers, and which process's CPU to count."""

    url: str
    headers: dict[str, str]
    process: Process
    redis: str = ""  # the broker's private redis-server, whose counters are read per point
    metrics_url: str = ""  # a broker's /metrics, whose audit counters are read per point
    metrics_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Env:
    """What every scenario shares: logs, the upstream and (once asked for) a Redis."""

    log_dir: Path
    placement: Placement
    upstream: Process | None = None
    upstream_url: str = ""
    redis_url: str = ""
    redis_note: str = ""
    broker_src: Path = REPO_ROOT  # where ``python -m broker`` runs from (a snapshot, or the tree)
    children: list[Process | RedisServer] = field(default_factory=list)
    # A command every broker runs under (``valgrind --tool=callgrind``, say); none by default.
    broker_prefix: tuple[str, ...] = ()

    def launch(self, name: str, argv: list[str], cores: str | None, **kw: Any) -> Process:
        child = Process.launch(argv, name=name, log_dir=self.log_dir, cores=cores, **kw)
        self.children.append(child)
        return child

    def broker(
        self,
        config: BrokerConfig,
        name: str,
        cores: str | None,
        *,
        path: list[str] | None = None,
        log_dir: Path | None = None,
        env_extra: dict[str, str] | None = None,
        **kw: Any,
    ) -> BrokerProcess:
        """A broker of ``broker_src`` on ``config`` (its CPU counts as the run's own); ``path``:
        more ``PYTHONPATH`` folders; ``env_extra``: more environment (secrets it names)."""
        pythonpath = os.pathsep.join([str(self.broker_src), *(path or [])])
        if self.broker_prefix:
            toml = Path(log_dir or self.log_dir) / f"{name}.toml"  # where launch_broker writes it
            kw["argv"] = [*self.broker_prefix, *broker_argv(toml)]
        started = launch_broker(
            config,
            log_dir=log_dir or self.log_dir,
            name=name,
            cores=cores,
            cwd=self.broker_src,
            env={**(env_extra or {}), "PYTHONPATH": pythonpath},
            **kw,
        )
        self.children.append(started.process)
        return started

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


@contextlib.contextmanager
def environment(
    log_dir: Path, placement: Placement, events: int, broker_src: Path = REPO_ROOT
) -> Iterator[Env]:
    env = Env(log_dir, placement, broker_src=broker_src)
    try:
        port = free_port()
        argv = [sys.executable, "-m", "benchmarks.upstream", "--port", str(port)]
        env.upstream = env.launch("upstream", [*argv, "--events", str(events)], placement.rest)
        env.upstream.wait_ready(f"{local_url(port)}/_ready")
        env.upstream_url = local_url(port)
        yield env
    finally:
        env.stop_all()


def redis_url(env: Env) -> str:
    """$REDIS_URL, else a private redis-server on core 1 (no persistence), else :6379."""
    if env.redis_url:
        return env.redis_url
    if os.environ.get("REDIS_URL"):
        env.redis_url, env.redis_note = os.environ["REDIS_URL"], "$REDIS_URL"
    elif find_redis_server():
        server = RedisServer(cores=env.placement.rest)  # no persistence
        env.children.append(server)
        server.start()
        env.redis_url = server.url
        env.redis_note = "a private redis-server started by the harness, pinned with the upstream"
    else:
        env.redis_url, env.redis_note = "redis://127.0.0.1:6379/0", "the local Redis on :6379"
    return env.redis_url


def direct(env: Env) -> Target:
    assert env.upstream is not None
    headers = {"Content-Type": "application/json", "A2A-Version": "1.0"}
    return Target(env.upstream_url + JSONRPC_PATH, headers, env.upstream)


@contextlib.contextmanager
def proxy(env: Env, client: str) -> Iterator[Target]:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.proxy", "--port", str(port), "--client", client]
    child = env.launch(f"proxy-{client}", [*argv, "--upstream", env.upstream_url + JSONRPC_PATH],
                       env.placement.sut)  # fmt: skip
    try:
        child.wait_ready(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/agents/{AGENT}/jsonrpc"
        yield Target(url, {"Content-Type": "application/json", "A2A-Version": "1.0"}, child)
    finally:
        child.stop()


# What ``broker(..., metering=...)`` configures for the load generator's agent (``loadgen``).
METERING = {
    "none": "no budget and no rate limit",
    "budget": "a lifetime calls budget far above what a run can spend",
    "rate": "that budget plus a per-agent rate limit that never refuses",
}


def metered(config: BrokerConfig, metering: str) -> BrokerConfig:
    """``config`` with what ``metering`` (a key of ``METERING``) asks for ``loadgen``."""
    if metering == "none":
        return config
    # The full pipeline meters every call: a budget far above what a run can spend.
    config.set("budgets.agents", **{CALLER: [budget("calls", "lifetime", 1_000_000_000_000)]})
    if metering == "rate":
        # A rate limit so high it never refuses: what checking it costs.
        config.set(f"budgets.agent_rates.{CALLER}", rate_per_s=1_000_000, burst=1_000_000)
    return config


def broker_config(port: int, store: str, redis: str, workers: int, metering: str) -> BrokerConfig:
    # [policy] allow_all (the default): the benchmarks that measure policy configure a file.
    config = BrokerConfig(port=port).set("server", workers=workers, log_level="info")
    config.set(
        "store", backend=store, redis_url=redis, key_prefix=f"a2ab-bench-{secrets.token_hex(4)}"
    )
    return metered(config, metering)


def register_bench(broker: BrokerProcess, upstream_url: str) -> str:
    """Register the upstream as ``bench`` and a caller-only ``loadgen``; its credential."""
    broker.register(AGENT, card(AGENT, upstream_url))
    return broker.register(CALLER, card(CALLER, closed_url()))


@contextlib.contextmanager
def broker(
    env: Env,
    *,
    store: str = "memory",
    workers: int = 1,
    cores: str | None = None,
    metering: str = "budget",
    server: str = "serve",
    store_settings: dict[str, Any] | None = None,
    budget_settings: dict[str, Any] | None = None,
) -> Iterator[Target]:
    """``store_settings``: more ``[store]`` settings (the soak's retention, for one);
    ``budget_settings``: more ``[budgets]`` settings (``benchmarks.reserve_ahead``)."""
    port = free_port()
    redis = redis_url(env) if store == "redis" else "redis://127.0.0.1:6379/0"
    name = f"broker-{store}-w{workers}-{metering}" + ("" if server == "serve" else f"-{server}")
    argv, path = server_command(server, env.log_dir / f"{name}.toml", port, workers)
    config = broker_config(port, store, redis, workers, metering)
    if store_settings:
        config.set("store", **store_settings)
    if budget_settings:
        config.set("budgets", **budget_settings)
    started = env.broker(config, name, cores or env.placement.sut, argv=argv, path=path)
    try:
        started.wait_ready()
        credential = register_bench(started, env.upstream_url)
        headers = {
            "Content-Type": "application/json",
            "A2A-Version": "1.0",
            "Authorization": f"Bearer {credential}",
        }
        private = redis if store == "redis" and env.redis_note.startswith("a private") else ""
        yield Target(
            started.jsonrpc_url(AGENT),
            headers,
            started.process,
            private,
            metrics_url=f"{started.url}/metrics",
            metrics_headers=started.admin_headers,
        )
    finally:
        started.stop()


# How scenario (s) starts the same app under each HTTP server (all with uvloop, one worker).
SERVERS = {
    "serve": "`a2a-broker serve` as shipped",
    "uvicorn": "stock uvicorn, `--loop uvloop --http httptools`, no connection bounds",
    "granian": "Granian (Rust HTTP/1), `--interface asgi --loop uvloop --http 1`",
}


def server_command(
    server: str, config: Path, port: int, workers: int
) -> tuple[list[str], list[str]]:
    """The command that serves the broker app, and extra ``PYTHONPATH`` folders it needs."""
    factory = "broker.http.app:app_from_environment"
    if server == "serve":
        return [sys.executable, "-m", "broker", "serve", "--config", str(config)], []
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning"], []  # fmt: skip
    if server == "granian":
        from benchmarks.granian_env import granian_path

        return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning",
                factory], [str(granian_path())]  # fmt: skip
    raise ValueError(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")


def snapshot_broker(ref: str, into: Path) -> Path:
    """Extract ``broker/`` as committed at ``ref`` into ``into``; the folder to run it from.

    Other work in progress in the tree then cannot change (or break) what is measured.
    """
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", ref, "broker"],
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def describe_ref(ref: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()

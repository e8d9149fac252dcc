"""The systems under test, each started on loopback and stopped in ``finally``.

Placement on a 2-core machine: the system under test on core 0; the upstream, Redis and wrk
share core 1 (``Placement``), so the broker competes with nothing but itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procs import Child, free_port
from benchmarks.upstream import JSONRPC_PATH, card

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    process: Child
    redis: str = ""  # the broker's private redis-server, whose counters are read per point


@dataclass
class Env:
    """What every scenario shares: logs, the upstream and (once asked for) a Redis."""

    log_dir: Path
    placement: Placement
    upstream: Child | None = None
    upstream_url: str = ""
    redis_url: str = ""
    redis_note: str = ""
    broker_src: Path = REPO_ROOT  # where ``python -m broker`` runs from (a snapshot, or the tree)
    children: list[Child] = field(default_factory=list)

    def launch(self, name: str, argv: list[str], cores: str | None, **kw: object) -> Child:
        child = Child.launch(name, argv, self.log_dir, cores=cores, **kw)  # type: ignore[arg-type]
        self.children.append(child)
        return child

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
        env.upstream.wait_ready(f"http://127.0.0.1:{port}/_ready")
        env.upstream_url = f"http://127.0.0.1:{port}"
        yield env
    finally:
        env.stop_all()


def redis_url(env: Env) -> str:
    """$REDIS_URL, else a private redis-server on core 1 (no persistence), else :6379."""
    if env.redis_url:
        return env.redis_url
    if os.environ.get("REDIS_URL"):
        env.redis_url, env.redis_note = os.environ["REDIS_URL"], "$REDIS_URL"
    elif shutil.which("redis-server"):
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        proc = env.launch("redis", [*argv, "--appendonly", "no"], env.placement.rest)
        proc.wait_port(port)
        env.redis_url = f"redis://127.0.0.1:{port}/0"
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


def _metering_config(metering: str) -> str:
    if metering == "none":
        return ""
    text = f"""
# The full pipeline meters every call: a budget far above what a run can spend.
[budgets.agents]
{CALLER} = [{{ metric = "calls", window = "lifetime", limit = 1000000000000 }}]
"""
    if metering == "rate":
        text += f"""
# A rate limit so high it never refuses: what checking it costs.
[budgets.agent_rates.{CALLER}]
rate_per_s = 1000000
burst = 1000000
"""
    return text


def _broker_config(port: int, store: str, redis: str, workers: int, metering: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
workers = {workers}
log_level = "info"

[store]
backend = "{store}"
redis_url = "{redis}"
key_prefix = "a2ab-bench-{secrets.token_hex(4)}"

[egress]
allow_loopback = true

[policy]
allow_all = true  # the benchmarks that measure policy configure a file
{_metering_config(metering)}"""


def _admin_post(url: str, token: str, payload: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url + "/admin/agents",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
        answer: dict[str, object] = json.loads(resp.read())
        return answer


def _register(url: str, token: str, upstream_url: str) -> str:
    """Register the upstream as ``bench`` and a caller-only ``loadgen``; its credential."""
    _admin_post(url, token, {"name": AGENT, "card": card(AGENT, upstream_url)})
    closed = f"http://127.0.0.1:{free_port()}"
    answer = _admin_post(url, token, {"name": CALLER, "card": card(CALLER, closed)})
    return str(answer["credential"])


@contextlib.contextmanager
def broker(
    env: Env,
    *,
    store: str = "memory",
    workers: int = 1,
    cores: str | None = None,
    metering: str = "budget",
    server: str = "serve",
) -> Iterator[Target]:
    port = free_port()
    redis = redis_url(env) if store == "redis" else "redis://127.0.0.1:6379/0"
    name = f"broker-{store}-w{workers}-{metering}" + ("" if server == "serve" else f"-{server}")
    config = env.log_dir / f"{name}.toml"
    config.write_text(_broker_config(port, store, redis, workers, metering))
    token = secrets.token_urlsafe(24)
    argv, path = server_command(server, config, port, workers)
    child_env = {
        "A2A_BROKER_ADMIN_TOKEN": token,
        "A2A_BROKER_CONFIG": str(config),
        "PYTHONPATH": os.pathsep.join([str(env.broker_src), *path]),
    }
    child = env.launch(name, argv, cores or env.placement.sut, env=child_env, cwd=env.broker_src)
    try:
        url = f"http://127.0.0.1:{port}"
        child.wait_ready(f"{url}/healthz")
        credential = _register(url, token, env.upstream_url)
        headers = {
            "Content-Type": "application/json",
            "A2A-Version": "1.0",
            "Authorization": f"Bearer {credential}",
        }
        private = redis if store == "redis" and env.redis_note.startswith("a private") else ""
        yield Target(f"{url}/agents/{AGENT}/jsonrpc", headers, child, private)
    finally:
        child.stop()


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

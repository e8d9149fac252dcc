"""Broker processes (and the programs around them) for e2e tests and benchmarks.

    config = BrokerConfig(port=free_port())
    with start_broker(config, log_dir=tmp_path, name="broker") as broker:
        credential = broker.register("echo", card)
        httpx.post(broker.jsonrpc_url("echo"), ...)

``launch_broker`` writes ``<log_dir>/<name>.toml`` (validated, see ``testkit.config``), starts
``python -m broker serve`` with a fresh admin token and returns at once, so several brokers (and
agents) can start together; ``wait_ready`` then waits for ``/healthz`` (or ``/readyz``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.settings import ADMIN_TOKEN_ENV, CONFIG_ENV
from testkit.config import BrokerConfig
from testkit.procs import REPO_ROOT, START_TIMEOUT_S, Process, local_url, python_module

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class BrokerProcess:
    """A broker started by ``launch_broker``: where it listens and how to administer it."""

    url: str
    admin_token: str
    process: Process
    config: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.process.log

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def agent_url(self, name: str) -> str:
        """The base URL an a2a-sdk client is given: the agent's card lives under it."""
        return f"{self.url}/agents/{name}"

    def jsonrpc_url(self, name: str) -> str:
        return f"{self.url}/agents/{name}/jsonrpc"

    def rest_url(self, name: str) -> str:
        return f"{self.url}/agents/{name}/rest"

    def wait_ready(self, path: str = "/healthz", *, timeout: float = START_TIMEOUT_S) -> None:
        self.process.wait_ready(self.url + path, timeout=timeout)

    def register(self, name: str, card: Mapping[str, Any]) -> str:
        """Register ``name`` with ``card`` through the admin API (201 or AssertionError); its
        new credential."""
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{self.url}/admin/agents",
            data=json.dumps({"name": name, "card": card}).encode(),
            headers={**self.admin_headers, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _DIRECT.open(request, timeout=10) as response:
                status, body = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode(errors="replace")
        if status != 201:
            raise AssertionError(
                f"registering {name}: {status} {body}\nbroker log:\n{self.process.log_tail()}"
            )
        return str(json.loads(body)["credential"])

    def stop(self) -> None:
        self.process.stop()


def broker_argv(config: str | Path) -> list[str]:
    return python_module("broker", "serve", "--config", str(config))


def launch_broker(
    config: BrokerConfig,
    *,
    log_dir: str | Path,
    name: str = "broker",
    admin_token: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path = REPO_ROOT,
    cores: str | None = None,
    open_files: int | None = None,
    argv: list[str] | None = None,
) -> BrokerProcess:
    """Write ``<log_dir>/<name>.toml`` and start a broker on it; does not wait.

    ``argv`` replaces ``python -m broker serve --config FILE`` (another server of the same app:
    it finds the file through ``$A2A_BROKER_CONFIG``, which is always set).
    """
    token = admin_token or secrets.token_urlsafe(24)
    path = config.write(Path(log_dir) / f"{name}.toml", env=env)
    child_env = {**(env or {}), ADMIN_TOKEN_ENV: token, CONFIG_ENV: str(path)}
    process = Process.launch(
        argv or broker_argv(path), name=name, log_dir=log_dir, env=child_env, cwd=cwd,
        cores=cores, open_files=open_files,
    )  # fmt: skip
    return BrokerProcess(local_url(config.port), token, process, path, child_env)


@contextlib.contextmanager
def start_broker(
    config: BrokerConfig,
    *,
    log_dir: str | Path,
    name: str = "broker",
    ready_path: str = "/healthz",
    timeout: float = START_TIMEOUT_S,
    **options: Any,
) -> Iterator[BrokerProcess]:
    """``launch_broker``, wait until ``ready_path`` answers, yield; stopped on the way out."""
    broker = launch_broker(config, log_dir=log_dir, name=name, **options)
    with broker.process.stopped_after():
        broker.wait_ready(ready_path, timeout=timeout)
        yield broker


def generate_signing_key(path: str | Path) -> Path:
    """``a2a-broker keys generate PATH``: a signing key replicas can share."""
    subprocess.run(
        [sys.executable, "-m", "broker", "keys", "generate", str(path)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    return Path(path)

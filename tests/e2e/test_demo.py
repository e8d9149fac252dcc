"""The README's demo, as a user runs it: `a2a-broker demo`, then `a2a-broker demo-ask`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.procs import REPO_ROOT, Process, free_port

from .wire import A2A_V1, jsonrpc_request, user_message


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    state = tmp_path_factory.mktemp("demo")
    port = free_port()
    argv = [sys.executable, "-m", "broker", "demo", "--port", str(port), "--state-dir", str(state)]
    url = f"http://127.0.0.1:{port}"
    with Process.start(
        argv,
        ready_url=f"{url}/agents/planner/.well-known/agent-card.json",
        log_dir=state,
        name="demo",
        timeout=60,
    ):
        yield url, state


def _mediated(state: Path) -> list[dict[str, object]]:
    log = (state / "logs" / "broker.log").read_text()
    return [json.loads(line) for line in log.splitlines() if '"event":"mediated"' in line]


def test_demo_ask_delegates_through_the_broker(demo: tuple[str, Path]) -> None:
    _, state = demo
    done = subprocess.run(
        [sys.executable, "-m", "broker", "demo-ask", "tide pools", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("via the broker: yes") == 2
    hops = {(e["caller"], e["target"]): e for e in _mediated(state)}
    assert hops[("demo-user", "planner")]["chain"] == ["demo-user"]
    for worker in ("researcher", "writer"):
        hop = hops[("planner", worker)]
        assert hop["chain"] == ["demo-user", "planner"] and hop["status"] == 200
        assert hop["tree"] == hops[("demo-user", "planner")]["tree"]


def test_demo_policy_keeps_workers_from_originating(demo: tuple[str, Path]) -> None:
    url, state = demo
    credentials = json.loads((state / "credentials.json").read_text())["credentials"]
    body = jsonrpc_request("SendMessage", {"message": user_message("on my own")})
    headers = {**A2A_V1, "Authorization": f"Bearer {credentials['researcher']}"}
    answer = httpx.post(f"{url}/agents/writer/jsonrpc", json=body, headers=headers).json()
    assert answer["error"]["data"][0]["reason"] == "DELEGATION_REQUIRED"

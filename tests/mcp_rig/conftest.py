"""Real MCP SDK servers, each its own process on a loopback port, started once per module, and a
test-only passthrough (``passthrough.py``) in front of them, built per test from ``broker.mcp``.

=========  ====================================================================================
``alpha``  SSE answers; the broker holds the bearer ``ALPHA_TOKEN`` for it
``beta``   JSON answers (``json_response``); the broker holds ``BETA_TOKEN``
``junk``   answers every POST with SSE events that are not MCP messages (aggregate = false)
=========  ====================================================================================

Callers: ``alice`` (bearer ``tok-alice``) and ``bob`` (``tok-bob``). Policy: nobody may use
``delete_repo``; bob may not use ``create_issue`` on alpha; everything else is allowed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from broker.mcp.reading import McpOperation
from broker.mcp.servers import McpServer, McpServerRegistry
from broker.mcp.sessions import CursorSeal, Sealer, SessionSeal, derive_seal_key
from broker.outbound.egress import EgressPolicy
from broker.settings import EgressSettings
from testkit.procs import Process, free_port

from .passthrough import Passthrough

RIG_SERVER = Path(__file__).with_name("rig_server.py")
TOKENS = {"alpha": "ALPHA_TOKEN", "beta": "BETA_TOKEN", "junk": "JUNK_TOKEN"}
CALLERS = {"tok-alice": "alice", "tok-bob": "bob"}


@dataclass(frozen=True)
class RigServers:
    urls: dict[str, str]  # server name -> its MCP endpoint


@pytest.fixture(scope="module")
def rig_servers() -> Iterator[RigServers]:
    flags = {"alpha": [], "beta": ["--json"], "junk": ["--garbage"]}
    urls = {}
    with ExitStack() as stack:
        for name, extra in flags.items():
            port = free_port()
            command = [sys.executable, str(RIG_SERVER), "--port", str(port), "--name", name,
                       "--token", TOKENS[name], *extra]
            stack.enter_context(Process.start(
                command, name=f"mcp-{name}", ready_url=f"http://127.0.0.1:{port}/healthz"))
            urls[name] = f"http://127.0.0.1:{port}/mcp"
        yield RigServers(urls)


def rig_policy(caller: str, server: str, op: McpOperation) -> bool:
    if op.kind == "tool" and op.name == "delete_repo":
        return False
    return not (caller == "bob" and server == "alpha" and op.name == "create_issue")


@dataclass
class RunningPassthrough:
    url: str  # http://127.0.0.1:PORT/mcp
    relay: Passthrough


@pytest.fixture
async def passthrough(rig_servers: RigServers) -> AsyncIterator[RunningPassthrough]:
    registry = McpServerRegistry(EgressPolicy(EgressSettings(allow_loopback=True)).check_url)
    for name, url in rig_servers.urls.items():
        registry.register(McpServer(
            name, url, auth_headers={"authorization": f"Bearer {TOKENS[name]}"},
            aggregate=name != "junk", idle_timeout_s=1.5))
    sealer = Sealer([derive_seal_key(b"rig secret")])
    relay = Passthrough(registry, SessionSeal(sealer, 3600), CursorSeal(sealer, 600), CALLERS,
                        rig_policy)
    runner = web.AppRunner(relay.app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield RunningPassthrough(f"http://127.0.0.1:{port}/mcp", relay)
    finally:
        await runner.cleanup()

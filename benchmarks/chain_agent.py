"""Agents hop1..hopN in one fast raw-ASGI process, each calling the next: a delegation chain.

    CHAIN_AGENT_CREDENTIALS='{"hop1": "...", ...}' python -m benchmarks.chain_agent --port N \\
        --hops 5 --onward 'http://127.0.0.1:B/agents/{name}/jsonrpc'

Agent ``hopK`` serves its card at ``/hopK/.well-known/agent-card.json`` and JSON-RPC at
``/hopK/jsonrpc``. On a ``SendMessage`` it first calls ``hop(K+1)`` (unless K is the last hop)
at ``--onward`` with ``{name}`` filled in, then answers a completed task with a fresh task id,
as ``benchmarks.upstream`` does. So a call to ``hop(N+1-d)`` makes a chain of depth ``d``.

The onward call is what an agent does through the broker (docs/delegation.md): the same body,
the agent's own broker credential in ``Authorization`` (from $CHAIN_AGENT_CREDENTIALS; none
when the agents call each other directly) and the inbound ``A2A-Delegation`` token passed on
unchanged, over one pooled aiohttp session (keep-alive, no connection limit: a chain of depth d
holds d-1 onward calls open at once per request, and a capped pool would deadlock the nest).
The agent does not verify the token (``verify_broker_token``): that is the agent's cost, not
the broker's, and this process is a load target.

An onward call that does not answer 200 with a completed task fails the request (HTTP 502,
a JSON-RPC error), so wrk counts it; ``GET /_stats`` counts onward calls that succeeded and
failed, and inbound requests that carried a delegation token.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import msgspec

from benchmarks.upstream import (
    Receive,
    Scope,
    Send,
    card,
    read_body,
    reply,
    serve,
    unary_body,
)

CREDENTIALS_ENV = "CHAIN_AGENT_CREDENTIALS"
DELEGATION = b"a2a-delegation"  # the header, as ASGI spells header names
COMPLETED = b'"TASK_STATE_COMPLETED"'
_ONWARD_TIMEOUT = aiohttp.ClientTimeout(total=30)


def hop_name(k: int) -> str:
    return f"hop{k}"


def hop_card(k: int, base_url: str) -> dict[str, Any]:
    """The card of ``hopK`` in the process at ``base_url`` (JSON-RPC at /hopK/jsonrpc)."""
    return {**card(hop_name(k), f"{base_url}/{hop_name(k)}"), "description": "benchmark hop"}


class _Envelope(msgspec.Struct):
    id: msgspec.Raw = msgspec.Raw(b"null")


_decode = msgspec.json.Decoder(_Envelope).decode


@dataclass
class Stats:
    onward_ok: int = 0
    onward_failed: int = 0
    inbound_with_token: int = 0


class Chain:
    """What every hop of the process shares: where onward calls go, credentials, one session."""

    def __init__(self, hops: int, onward: str, credentials: dict[str, str]) -> None:
        self.hops = hops
        self.onward = onward
        self.credentials = credentials
        self.stats = Stats()
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count()
        self._prefix = os.urandom(4).hex()

    def task_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # built inside the running loop, on the first onward call
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=_ONWARD_TIMEOUT,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def call_on(self, k: int, body: bytes, token: bytes | None) -> tuple[int, bytes]:
        """``hopK``'s onward call to ``hop(K+1)``: its status and body."""
        headers = {"Content-Type": "application/json", "A2A-Version": "1.0"}
        if credential := self.credentials.get(hop_name(k)):
            headers["Authorization"] = f"Bearer {credential}"
        if token is not None:
            headers["A2A-Delegation"] = token.decode("latin-1")
        url = self.onward.format(name=hop_name(k + 1))
        async with self.session().post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.read()


def _failure(rpc_id: bytes, k: int, status: int, answer: bytes) -> bytes:
    data = {"hop": hop_name(k), "onwardStatus": status, "onwardAnswer": answer[:300].decode()}
    error = {"code": -32603, "message": "onward call failed", "data": data}
    return b'{"jsonrpc":"2.0","id":%s,"error":%s}' % (rpc_id, json.dumps(error).encode())


async def _serve_hop(chain: Chain, k: int, scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    rpc_id = bytes(_decode(body).id)
    token = next((v for n, v in scope["headers"] if n == DELEGATION), None)
    chain.stats.inbound_with_token += token is not None
    if k < chain.hops:
        status, answer = await chain.call_on(k, body, token)
        if status != 200 or COMPLETED not in answer:
            chain.stats.onward_failed += 1
            await reply(send, 502, _failure(rpc_id, k, status, answer))
            return
        chain.stats.onward_ok += 1
    await reply(send, 200, unary_body(rpc_id, chain.task_id()))


def make_app(chain: Chain) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    rpc = {f"/{hop_name(k)}/jsonrpc": k for k in range(1, chain.hops + 1)}
    cards = {f"/{hop_name(k)}/.well-known/agent-card.json": k for k in range(1, chain.hops + 1)}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to set up
        path = scope["path"]
        if path in rpc and scope["method"] == "POST":
            await _serve_hop(chain, rpc[path], scope, receive, send)
        elif path in cards:
            host, port = scope["server"]
            await reply(
                send, 200, json.dumps(hop_card(cards[path], f"http://{host}:{port}")).encode()
            )
        elif path == "/_stats":
            await reply(send, 200, json.dumps(asdict(chain.stats)).encode())
        elif path == "/_ready":
            await reply(send, 200, b'{"status":"ok"}')
        else:
            await reply(send, 404, b'{"error":"not found"}')

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hops", type=int, default=5)
    parser.add_argument("--onward", required=True, help="URL of hop {name}'s JSON-RPC endpoint")
    args = parser.parse_args()
    credentials = json.loads(os.environ.get(CREDENTIALS_ENV) or "{}")
    serve(make_app(Chain(args.hops, args.onward, credentials)), args.port, backlog=4096)


if __name__ == "__main__":
    main()

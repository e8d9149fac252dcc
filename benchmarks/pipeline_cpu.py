"""CPU time per request of the whole A2A pipeline, in process: what the stages themselves cost.

    .venv/bin/python -m benchmarks.pipeline_cpu [--number N] [--rounds R] [--concurrency C]
        [--audit-dir DIR]

Builds the A2A chain of ``broker.pipeline.a2a.a2a_stages`` as the runtime does, on the memory
store with auditing off (``--audit-dir``: to a fsynced file log there) and policy ``allow_all``,
in front of the fake transport answering every ``SendMessage`` with a new completed task (so
each request records a task route), and sends it R rounds of N JSON-RPC ``SendMessage`` (C at a
time) after a warm-up. Prints the CPU µs per request
(``time.process_time``) of each round and the best. No HTTP, no sockets: other processes on a
shared machine do not inflate it, unlike wrk's figures, so it shows a change to the stages
that costs a few percent (decision 0028).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import uuid
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder
from broker.audit.trail import AuditTrail
from broker.budgets.scopes import ConfiguredScopes
from broker.containment.global_kill import GlobalKillSwitch
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.identity.cards import BrokerCardRewriter
from broker.identity.credentials import credential_digest
from broker.identity.keys import BrokerKeys
from broker.late_writes import LateWrites
from broker.outbound.fake import FakeRequest, FakeResponse, FakeTransport
from broker.pipeline.a2a import A2aParts, a2a_stages
from broker.pipeline.stage import fold
from broker.policy.roles import AgentRoles
from broker.protocols.a2a.task_pages import PageTokens
from broker.settings import ServerSettings, Settings
from broker.stages.authenticate import Authenticate
from broker.stages.responses import ResponseInspector
from broker.stores.base import Stores
from broker.stores.memory import MemoryBackend
from broker.types import AgentRecord, MediationContext, Outcome

CREDENTIAL = "a2ab_pipeline-cpu"
AGENT_URL = "http://127.0.0.1:9/rpc"
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
    "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}).encode()  # fmt: skip
HEADERS = {
    "authorization": f"Bearer {CREDENTIAL}",
    "content-type": "application/json",
    "a2a-version": "1.0",
}


def _card(name: str) -> str:
    return json.dumps({
        "name": name, "description": "d", "version": "1", "capabilities": {}, "skills": [],
        "supportedInterfaces": [
            {"url": AGENT_URL, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "defaultInputModes": ["text/plain"], "defaultOutputModes": ["text/plain"],
    })  # fmt: skip


async def _completed_task(_: FakeRequest) -> FakeResponse:
    task = {"id": uuid.uuid4().hex, "contextId": "c", "status": {"state": "TASK_STATE_COMPLETED"}}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"task": task}}).encode()
    return FakeResponse(200, body, headers={"content-type": "application/json"})


async def _nothing() -> None:
    return None


async def _allowed(_: str) -> None:
    return None


async def bench_parts(
    settings: Settings,
    stores: Stores,
    keys: BrokerKeys,
    *,
    trail: AuditTrail | None = None,
    token_ttl_s: int = 60,
) -> tuple[A2aParts, TokenMinter]:
    """The A2A pipeline's parts on ``stores`` (the two agents and the caller's credential put
    there) against the canned upstream, with the minter its hop tokens come from."""
    for name in ("caller", "target"):
        record = AgentRecord(name=name, card_json=_card(name), jsonrpc_url=AGENT_URL)
        await stores.registry.put(record)
    await stores.credentials.replace("caller", credential_digest(CREDENTIAL))
    pages = PageTokens(keys)
    minter = TokenMinter(keys, settings.public_url, token_ttl_s)
    parts = A2aParts(
        settings=settings,
        stores=stores,
        audit=AuditRecorder(trail),
        authenticate=Authenticate(stores.credentials, stores.registry),
        policy=None,
        minter=minter,
        verifier=TokenVerifier(keys, settings.public_url),
        roles=AgentRoles(None),
        budget_scopes=ConfiguredScopes(settings.budgets, stores.budget_limits),
        late_writes=LateWrites(()),
        kill=GlobalKillSwitch(stores.kill_switch, _nothing),
        transport=FakeTransport(_completed_task),
        inspector=ResponseInspector(
            stores.task_routes, 60, BrokerCardRewriter(settings.public_url, keys), pages
        ),
        pages=pages,
        push_url_allowed=_allowed,
    )
    return parts, minter


async def _pipeline(audit_dir: str | None = None) -> A2aParts:
    settings = Settings(server=ServerSettings(public_url="http://broker.test"))
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    trail = None
    if audit_dir is not None:
        trail = await AuditTrail.open(FileAuditLog(audit_dir), "pipeline-cpu", keys)
    parts, _ = await bench_parts(settings, MemoryBackend().stores(), keys, trail=trail)
    return parts


async def sends(
    call: Callable[[MediationContext], Awaitable[Outcome]], count: int, concurrency: int
) -> None:
    """``count`` of the canned ``SendMessage`` through ``call`` (a folded pipeline),
    ``concurrency`` at a time; SystemExit if one is not answered with a result."""

    async def body() -> bytes:
        return BODY

    async def many(share: int) -> None:
        for _ in range(share):
            ctx = MediationContext("jsonrpc", "target", "POST", headers=HEADERS, read_body=body)
            outcome = await call(ctx)
            if outcome.status != 200 or b'"result"' not in getattr(outcome, "body", b""):
                raise SystemExit(f"the pipeline refused: {getattr(outcome, 'body', b'')[:300]!r}")

    await asyncio.gather(*(many(count // concurrency) for _ in range(concurrency)))


async def measure(
    number: int, rounds: int, concurrency: int = 1, audit_dir: str | None = None
) -> list[float]:
    """CPU µs per request of each round."""
    parts = await _pipeline(audit_dir)
    call = fold(a2a_stages(parts))
    await sends(call, 300, concurrency)
    per_round = []
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        await sends(call, number, concurrency)
        per_round.append((time.process_time() - started) / number * 1e6)
    await parts.audit.close()
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best is reported)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument(
        "--audit-dir", help="audit to a file log (fsync on) in this directory; default: off"
    )
    args = parser.parse_args()
    rounds = asyncio.run(measure(args.number, args.rounds, args.concurrency, args.audit_dir))
    print("CPU µs per request, each round:", " ".join(f"{r:.0f}" for r in rounds))
    print(f"best: {min(rounds):.0f} µs per request")


if __name__ == "__main__":
    main()

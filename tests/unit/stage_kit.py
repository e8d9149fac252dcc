"""What the stage unit tests share: a context, a fake ``call_next``, keys and the memory stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.identity.keys import BrokerKeys
from broker.protocols.a2a.operations import SEND_MESSAGE, Operation
from broker.protocols.a2a.reading import Reading
from broker.types import AgentRecord, MediationContext, Outcome, Reply, StreamReply

ISSUER = "http://broker.test"
KEYS = BrokerKeys(Ed25519PrivateKey.generate())
MINTER = TokenMinter(KEYS, ISSUER, 600)
VERIFIER = TokenVerifier(KEYS, ISSUER)
CARD = '{"name": "b", "capabilities": {}}'


async def no_body() -> bytes:
    return b""


def ctx(
    *,
    caller: str = "a",
    target: str = "b",
    operation: Operation = SEND_MESSAGE,
    headers: dict[str, str] | None = None,
    card: str = CARD,
) -> MediationContext:
    """A context as the stages before the one under test left it."""
    made = MediationContext(
        "jsonrpc", target, "POST", headers=headers or {}, read_body=no_body, caller=caller
    )
    made.operation = operation
    made.target = AgentRecord(name=target, card_json=card, jsonrpc_url="http://127.0.0.1:9/rpc")
    made.chain = (caller,)
    made.reading = Reading()
    return made


@dataclass
class Next:
    """A fake ``call_next``: records each context it gets and answers ``outcome``."""

    outcome: Outcome = field(default_factory=lambda: Reply(200, b"{}"))
    seen: list[MediationContext] = field(default_factory=list)

    async def __call__(self, ctx: MediationContext) -> Outcome:
        self.seen.append(ctx)
        return self.outcome

    @property
    def called(self) -> bool:
        return bool(self.seen)


def stream_of(*events: bytes) -> StreamReply:
    async def events_() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return StreamReply(events_())

"""A stage's view of one request, for tests that run stages in process without an edge."""

from __future__ import annotations

from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.types import MediationContext


async def _empty_object() -> bytes:
    return b"{}"


def send_message_context(caller: str = "a", target: str = "b") -> MediationContext:
    """A JSON-RPC ``SendMessage`` from ``caller`` to ``target``, its body ``{}``."""
    ctx = MediationContext(
        "jsonrpc", target, "POST", headers={}, read_body=_empty_object, caller=caller
    )
    ctx.operation = SEND_MESSAGE
    return ctx

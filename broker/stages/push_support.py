"""Push-config operations on an agent whose card does not declare push notifications.

The spec says the four push-config operations MUST then answer PushNotificationNotSupported.
The broker answers so itself, before it reads the parameters or checks the task, so the answer
says nothing about the task or the URL the request names.
"""

from __future__ import annotations

import msgspec

from broker.errors import PushNotificationNotSupportedError
from broker.protocols.a2a.operations import PUSH_CONFIG_OPERATIONS
from broker.stores.base import AgentRecord
from broker.types import CallNext, MediationContext, Outcome


class _Capabilities(msgspec.Struct):
    pushNotifications: bool = False


class _Card(msgspec.Struct):
    capabilities: _Capabilities = msgspec.field(default_factory=_Capabilities)


_card = msgspec.json.Decoder(_Card)


def declares_push(record: AgentRecord) -> bool:
    """Whether the agent's card says ``capabilities.pushNotifications: true``."""
    try:
        return _card.decode(record.card_json).capabilities.pushNotifications
    except msgspec.DecodeError:
        return False


class PushSupport:
    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.target is not None  # noqa: S101 - set by ResolveTarget
        if ctx.operation in PUSH_CONFIG_OPERATIONS and not declares_push(ctx.target):
            raise PushNotificationNotSupportedError
        return await call_next(ctx)

"""Authenticate the caller from its broker credential, and only from that (every protocol)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from broker.errors import CallerSuspendedError, InvalidCredentialError, UnauthenticatedError
from broker.identity.credentials import credential_digest
from broker.stores.base import AgentRegistry, CredentialStore
from broker.types import Ctx, Outcome


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class Authenticate:
    """Sets ``ctx.caller``; refuses missing, unknown or revoked credentials, suspended callers."""

    def __init__(self, credentials: CredentialStore, registry: AgentRegistry) -> None:
        self._credentials = credentials
        self._registry = registry

    async def __call__(self, ctx: Ctx, call_next: Callable[[Ctx], Awaitable[Outcome]]) -> Outcome:
        ctx.caller = await self.identify(ctx.headers.get("authorization"))
        return await call_next(ctx)

    async def identify(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        if token is None:
            raise UnauthenticatedError
        caller = await self._credentials.lookup(credential_digest(token))
        if caller is None:
            raise InvalidCredentialError
        record = await self._registry.get(caller)
        if record is not None and record.status == "suspended":
            raise CallerSuspendedError
        return caller

"""Establish the delegation chain from the A2A-Delegation token the caller presents.

The token must be one the broker minted for this caller (audience = the authenticated agent),
unexpired, not revoked, and its tree not killed. Without a token the caller starts a new chain
(whether it may is the policy stage's question).
"""

from __future__ import annotations

from broker.delegation import DELEGATION_HEADER as DELEGATION_HEADER_NAME
from broker.delegation.errors import DelegationTokenRevokedError
from broker.delegation.tokens import TokenVerifier
from broker.errors import TreeKilledError
from broker.stores.base import Revocations
from broker.types import CallNext, MediationContext, Outcome

DELEGATION_HEADER = DELEGATION_HEADER_NAME.lower()


class DelegationContext:
    def __init__(self, verifier: TokenVerifier, revocations: Revocations) -> None:
        self._verifier = verifier
        self._revocations = revocations

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        token = ctx.headers.get(DELEGATION_HEADER, "").strip()
        if not token:
            ctx.chain = (ctx.caller,)
            return await call_next(ctx)
        claims = self._verifier.verify_presented(token, ctx.caller)
        status = await self._revocations.check(claims.jti, claims.tree)
        if status == "tree_killed":
            raise TreeKilledError(metadata={"tree": claims.tree})
        if status == "token_revoked":
            raise DelegationTokenRevokedError
        ctx.parent = claims
        ctx.chain = (*claims.chain, ctx.caller)
        return await call_next(ctx)

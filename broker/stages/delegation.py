"""Establish the delegation chain from the A2A-Delegation token the caller presents.

The token must be one the broker minted for this caller (audience = the authenticated agent),
unexpired, not revoked, and its tree not killed. Without a token the caller starts a new chain
(whether it may is the policy stage's question). One stage for every protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from broker.delegation import DELEGATION_HEADER as DELEGATION_HEADER_NAME
from broker.delegation.errors import DelegationTokenRevokedError
from broker.delegation.tokens import DelegationClaims, TokenVerifier
from broker.errors import TreeKilledError
from broker.stores.base import Revocations
from broker.types import Ctx, Outcome

DELEGATION_HEADER = DELEGATION_HEADER_NAME.lower()


class DelegationContext:
    def __init__(self, verifier: TokenVerifier, revocations: Revocations) -> None:
        self._verifier = verifier
        self._revocations = revocations

    async def __call__(self, ctx: Ctx, call_next: Callable[[Ctx], Awaitable[Outcome]]) -> Outcome:
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        ctx.parent = await presented_context(
            self._verifier, self._revocations, ctx.headers, ctx.caller
        )
        ctx.chain = (*ctx.parent.chain, ctx.caller) if ctx.parent else (ctx.caller,)
        return await call_next(ctx)


async def presented_context(
    verifier: TokenVerifier, revocations: Revocations, headers: Mapping[str, str], caller: str
) -> DelegationClaims | None:
    """The verified claims of the A2A-Delegation token ``caller`` presents, or None without one.

    Raises the token's refusal (invalid, expired, not yours), DELEGATION_TOKEN_REVOKED or
    TREE_KILLED.
    """
    token = headers.get(DELEGATION_HEADER, "").strip()
    if not token:
        return None
    claims = verifier.verify_presented(token, caller)
    status = await revocations.check(claims.jti, claims.tree)
    if status == "tree_killed":
        raise TreeKilledError(metadata={"tree": claims.tree})
    if status == "token_revoked":
        raise DelegationTokenRevokedError
    return claims

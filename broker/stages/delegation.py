"""Establish the delegation chain from the A2A-Delegation token the caller presents.

The token must be one the broker minted for this caller (audience = the authenticated agent),
unexpired, not revoked, and its tree not killed. Without a token the caller starts a new chain
(whether it may is the policy stage's question). One stage for every protocol.

Where a send will take a fan-out slot (``defer``: the A2A pipeline's sends), the revocation
check is left to the guards, whose store does it in the slot's own round trip (decision 0075):
the token's integrity, audience and time are still checked here, and nothing between this stage
and the guards (policy, containment) touches a store or lets anything leave. Any refusal or
answer before the guards has checked is replaced by the revocation's refusal if there is one,
so a revoked token or a killed tree is still what the caller hears first, and its audit record
names no chain, as when the check ran here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

from broker.delegation import DELEGATION_HEADER as DELEGATION_HEADER_NAME
from broker.delegation.errors import DelegationTokenRevokedError
from broker.delegation.tokens import DelegationClaims, TokenVerifier
from broker.errors import BrokerError, TreeKilledError
from broker.stores.base import Revocations, RevocationStatus, Revoked
from broker.types import CallContext, Ctx, Outcome

DELEGATION_HEADER = DELEGATION_HEADER_NAME.lower()


class DelegationContext:
    """``defer``: whether this call's revocation check is the guards' (see the module doc)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        revocations: Revocations,
        defer: Callable[[Any], bool] | None = None,
    ) -> None:
        self._verifier = verifier
        self._revocations = revocations
        self._defer = defer

    async def __call__(self, ctx: Ctx, call_next: Callable[[Ctx], Awaitable[Outcome]]) -> Outcome:
        assert ctx.caller is not None  # noqa: S101 - authenticated earlier
        if self._defer is None or not self._defer(ctx):
            ctx.parent = await presented_context(
                self._verifier, self._revocations, ctx.headers, ctx.caller
            )
            ctx.chain = (*ctx.parent.chain, ctx.caller) if ctx.parent else (ctx.caller,)
            return await call_next(ctx)
        ctx.parent = verified_claims(self._verifier, ctx.headers, ctx.caller)
        ctx.chain = (*ctx.parent.chain, ctx.caller) if ctx.parent else (ctx.caller,)
        if ctx.parent is None:
            return await call_next(ctx)
        ctx.revocation_unchecked = True
        try:
            outcome = await call_next(ctx)
        except BrokerError:
            await self._check_now(ctx)
            raise
        await self._check_now(ctx)
        return outcome

    async def _check_now(self, ctx: CallContext) -> None:
        """If the guards did not check the token (something before them refused or answered),
        check it now: its refusal replaces what the call would otherwise get. A store failure
        here leaves the call's own refusal or answer as it was."""
        if not ctx.revocation_unchecked or ctx.parent is None:
            return
        ctx.revocation_unchecked = False
        try:
            status = await self._revocations.check(ctx.parent.jti, ctx.parent.tree)
        except BrokerError:
            return
        refuse_revoked(ctx, status)


def refuse_revoked(ctx: CallContext, status: RevocationStatus) -> None:
    """Raise ``status``'s refusal (``raise_revoked``) unless it is "ok"."""
    if status != "ok":
        raise_revoked(ctx, status)


def raise_revoked(ctx: CallContext, status: Revoked) -> NoReturn:
    """Raise TREE_KILLED or DELEGATION_TOKEN_REVOKED, with the context as the delegation stage
    leaves it when its own check refuses: no chain, no policy."""
    tree = ctx.parent.tree if ctx.parent is not None else ""
    ctx.parent, ctx.chain, ctx.revocation_unchecked = None, (), False
    ctx.policy_rule = ctx.policy_version = ctx.approval_rule = ""
    if status == "tree_killed":
        raise TreeKilledError(metadata={"tree": tree})
    raise DelegationTokenRevokedError


def verified_claims(
    verifier: TokenVerifier, headers: Mapping[str, str], caller: str
) -> DelegationClaims | None:
    """The verified claims of the A2A-Delegation token ``caller`` presents (None without one),
    not yet checked for revocation. Raises the token's refusal (invalid, expired, not yours)."""
    token = headers.get(DELEGATION_HEADER, "").strip()
    if not token:
        return None
    return verifier.verify_presented(token, caller)


async def presented_context(
    verifier: TokenVerifier, revocations: Revocations, headers: Mapping[str, str], caller: str
) -> DelegationClaims | None:
    """The verified claims of the A2A-Delegation token ``caller`` presents, or None without one.

    Raises the token's refusal (invalid, expired, not yours), DELEGATION_TOKEN_REVOKED or
    TREE_KILLED.
    """
    claims = verified_claims(verifier, headers, caller)
    if claims is None:
        return None
    status = await revocations.check(claims.jti, claims.tree)
    if status == "tree_killed":
        raise TreeKilledError(metadata={"tree": claims.tree})
    if status == "token_revoked":
        raise DelegationTokenRevokedError
    return claims

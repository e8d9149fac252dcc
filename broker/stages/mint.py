"""Mint the per-hop token the target receives: proof the request came through the broker.

Audience is the target, the chain grows by the caller, scope names this hop's operation and
skill, and expiry and deadline never exceed the parent's. The caller's own credentials never
travel on (the forward stage sends only this token and the upstream credential).
"""

from __future__ import annotations

from broker.delegation.tokens import TokenMinter, hop_scope
from broker.types import CallNext, MediationContext, Outcome


class MintHopToken:
    def __init__(self, minter: TokenMinter, default_deadline_s: float) -> None:
        self._minter = minter
        self._default_deadline_s = default_deadline_s

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.caller is not None and ctx.target is not None  # noqa: S101
        assert ctx.operation is not None  # noqa: S101
        scope = hop_scope(ctx.operation.name, [ctx.skill] if ctx.skill else [])
        # A2A-Deadline (checked by ParseRequest) may only shorten the default.
        default, asked = self._default_deadline_s, ctx.deadline_s
        deadline = default if asked is None else min(asked, default)
        # The data controls' tags (none when they are off): the parent's, and this hop's.
        tags = ctx.data_tags
        if ctx.parent is None:
            token, claims = self._minter.mint_origin(
                ctx.caller, ctx.target.name, scope, deadline, tags=tags
            )
        else:
            token, claims = self._minter.mint_next(
                ctx.parent, ctx.caller, ctx.target.name, scope, deadline, tags=tags
            )
        ctx.hop_token, ctx.hop = token, claims
        return await call_next(ctx)

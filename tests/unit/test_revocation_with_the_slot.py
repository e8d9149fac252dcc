"""A send's revocation check, left by the delegation stage to the guards (one round trip with the
fan-out slot, decision 0075): what the caller hears and what is counted stay as when the
delegation stage checked it first.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from stage_kit import MINTER, VERIFIER, Next, ctx

from broker.delegation.errors import DelegationTokenRevokedError
from broker.delegation.tokens import hop_scope
from broker.errors import PolicyDeniedError, TreeKilledError
from broker.pipeline.stage import fold
from broker.protocols.a2a.operations import GET_TASK
from broker.settings import DelegationSettings, GuardLimits, LimitSettings
from broker.stages.delegation import DelegationContext
from broker.stages.guards import CascadeGuards
from broker.stores.base import DelegationUsage, Stores
from broker.stores.memory import MemoryBackend
from broker.types import MediationContext, Outcome

Stage = Callable[[MediationContext, Callable[[MediationContext], Awaitable[Outcome]]],
                 Awaitable[Outcome]]  # fmt: skip


def _sends(c: MediationContext) -> bool:
    return c.operation is not None and c.operation.sends_message


class _CountedChecks:
    """The memory revocations, counting ``check`` calls."""

    def __init__(self, stores: Stores) -> None:
        self.inner = stores.revocations
        self.checks = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def check(self, jti: str, tree: str) -> str:
        self.checks += 1
        return await self.inner.check(jti, tree)


def _chain(stores: Stores, *between: Stage, upstream: Next) -> Callable[..., Awaitable[Outcome]]:
    guards = CascadeGuards(
        stores.delegation_counters,
        DelegationSettings(limits=GuardLimits(max_tree_size=10)),
        LimitSettings(),
        revocations=stores.revocations,
    )
    delegation = DelegationContext(VERIFIER, stores.revocations, defer=_sends)
    return fold([delegation, *between, guards, upstream_stage(upstream)])


def upstream_stage(upstream: Next) -> Stage:
    async def answer(c: MediationContext, _: object) -> Outcome:
        return await upstream(c)

    return answer


async def _deny(c: MediationContext, call_next: object) -> Outcome:
    c.policy_rule, c.policy_version = "p, a, b, send, deny", "v1"
    raise PolicyDeniedError


async def test_a_valid_token_is_checked_once_and_reaches_the_agent_with_its_chain() -> None:
    stores = MemoryBackend().stores()
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    upstream = Next()
    await _chain(stores, upstream=upstream)(ctx(headers={"a2a-delegation": token}))
    seen = upstream.seen[0]
    assert seen.parent == claims and seen.chain == ("origin", "a")
    assert not seen.revocation_unchecked
    usage = await stores.delegation_counters.usage(claims.jti, claims.tree)
    assert usage.total_children == 1 and usage.tree_size == 1


@pytest.mark.parametrize("kill", [False, True])
async def test_a_revoked_token_or_killed_tree_is_refused_at_the_guards_counting_nothing(
    kill: bool,
) -> None:
    stores = MemoryBackend().stores()
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    until = time.time() + 60
    if kill:
        await stores.revocations.kill_tree(claims.tree, until)
    else:
        await stores.revocations.revoke_token(claims.jti, until)
    upstream, call = Next(), ctx(headers={"a2a-delegation": token})
    with pytest.raises(TreeKilledError if kill else DelegationTokenRevokedError):
        await _chain(stores, upstream=upstream)(call)
    assert not upstream.called
    assert (call.parent, call.chain, call.policy_rule) == (None, (), "")
    usage = await stores.delegation_counters.usage(claims.jti, claims.tree)
    assert usage == DelegationUsage(0, 0, 0)


async def test_a_refusal_before_the_guards_gives_way_to_the_revocation() -> None:
    stores = MemoryBackend().stores()
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    upstream, call = Next(), ctx(headers={"a2a-delegation": token})
    with pytest.raises(PolicyDeniedError):  # not revoked: the policy's own refusal stands
        await _chain(stores, _deny, upstream=upstream)(call)
    await stores.revocations.revoke_token(claims.jti, time.time() + 60)
    call = ctx(headers={"a2a-delegation": token})
    with pytest.raises(DelegationTokenRevokedError):
        await _chain(stores, _deny, upstream=upstream)(call)
    # Its record names no chain and no policy, as when the check came first.
    assert (call.parent, call.chain, call.policy_rule, call.policy_version) == (None, (), "", "")
    assert not upstream.called


async def test_what_takes_no_slot_is_checked_before_it_goes_on() -> None:
    stores = MemoryBackend().stores()
    counted = _CountedChecks(stores)
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("GetTask"))
    delegation = DelegationContext(VERIFIER, counted, defer=_sends)  # type: ignore[arg-type]
    upstream = Next()
    await delegation(ctx(operation=GET_TASK, headers={"a2a-delegation": token}), upstream)
    assert counted.checks == 1 and upstream.seen[0].parent == claims
    await stores.revocations.revoke_token(claims.jti, time.time() + 60)
    with pytest.raises(DelegationTokenRevokedError):
        await delegation(ctx(operation=GET_TASK, headers={"a2a-delegation": token}), Next())


async def test_an_answer_before_the_guards_gives_way_to_the_revocation() -> None:
    stores = MemoryBackend().stores()
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    await stores.revocations.revoke_token(claims.jti, time.time() + 60)
    delegation = DelegationContext(VERIFIER, stores.revocations, defer=_sends)
    with pytest.raises(DelegationTokenRevokedError):
        await delegation(ctx(headers={"a2a-delegation": token}), Next())

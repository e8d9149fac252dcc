"""The A2A decision stages one at a time: a fake ``call_next``, the memory stores, real tokens.

Each either passes on (having learnt what it must into the context) or refuses with its own
error, and then the rest of the chain never runs.
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stage_kit import ISSUER, KEYS, MINTER, VERIFIER, Next, ctx

from broker.delegation.errors import (
    DelegationRequiredError,
    DelegationTokenInvalidError,
    DelegationTokenRevokedError,
)
from broker.delegation.tokens import TokenMinter, hop_scope
from broker.errors import (
    AgentNotFoundError,
    AgentSuspendedError,
    BindingNotSupportedError,
    CycleDetectedError,
    EgressDeniedError,
    PolicyDeniedError,
    PushNotificationNotSupportedError,
    TaskNotFoundError,
    TreeKilledError,
)
from broker.identity.keys import BrokerKeys
from broker.policy.engine import PolicyEngine
from broker.policy.runtime import DEFAULT_MODEL
from broker.protocols.a2a.operations import GET_TASK, PUSH_CONFIG_OPERATIONS, SEND_MESSAGE
from broker.protocols.a2a.reading import Reading
from broker.protocols.a2a.task_pages import PageTokens
from broker.settings import DelegationSettings
from broker.stages.delegation import DelegationContext
from broker.stages.mint import MintHopToken
from broker.stages.policy import ChainPolicy
from broker.stages.push_support import PushSupport
from broker.stages.resolve import ResolveTarget
from broker.stages.task_scope import TaskScope
from broker.stores.base import TaskRoute
from broker.stores.memory import MemoryBackend
from broker.types import AgentRecord

PUSH_CARD = '{"name": "b", "capabilities": {"pushNotifications": true}}'


def _engine(policy: str) -> PolicyEngine:
    engine = PolicyEngine(DEFAULT_MODEL.read_text())
    engine.swap(engine.load_text(policy, "policy.csv"))
    return engine


# --- ResolveTarget -------------------------------------------------------------------------------


async def test_resolve_sets_the_target_and_refuses_unknown_suspended_or_unbound_agents() -> None:
    stores = MemoryBackend().stores()
    stage = ResolveTarget(stores.registry)
    await stores.registry.put(AgentRecord(name="b", card_json="{}", jsonrpc_url="http://x/rpc"))
    await stores.registry.put(AgentRecord(name="rest-only", card_json="{}", rest_url="http://x"))
    await stores.registry.put(
        AgentRecord(name="off", card_json="{}", jsonrpc_url="http://x/rpc", status="suspended")
    )
    call_next = Next()
    found = ctx()
    found.target = None
    await stage(found, call_next)
    assert call_next.seen[0].target is not None and call_next.seen[0].target.name == "b"
    for name, error in [
        ("nobody", AgentNotFoundError),
        ("off", AgentSuspendedError),
        ("rest-only", BindingNotSupportedError),
    ]:
        refused = Next()
        with pytest.raises(error):
            await stage(ctx(target=name), refused)
        assert not refused.called


# --- PushSupport ---------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(PUSH_CONFIG_OPERATIONS, key=lambda o: o.name))
async def test_push_configs_are_refused_for_an_agent_whose_card_has_no_push(operation) -> None:
    call_next = Next()
    with pytest.raises(PushNotificationNotSupportedError):
        await PushSupport()(ctx(operation=operation), call_next)
    assert not call_next.called
    await PushSupport()(ctx(operation=operation, card=PUSH_CARD), call_next)
    await PushSupport()(ctx(operation=SEND_MESSAGE), call_next)
    assert len(call_next.seen) == 2


# --- DelegationContext ---------------------------------------------------------------------------


async def test_without_a_token_the_caller_starts_a_chain_of_its_own() -> None:
    call_next = Next()
    await DelegationContext(VERIFIER, MemoryBackend().stores().revocations)(ctx(), call_next)
    assert call_next.seen[0].parent is None and call_next.seen[0].chain == ("a",)


async def test_a_token_minted_for_the_caller_extends_its_chain() -> None:
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    call_next = Next()
    stage = DelegationContext(VERIFIER, MemoryBackend().stores().revocations)
    await stage(ctx(headers={"a2a-delegation": token}), call_next)
    assert call_next.seen[0].parent == claims
    assert call_next.seen[0].chain == ("origin", "a")


async def test_a_revoked_token_or_a_killed_tree_is_refused() -> None:
    stores = MemoryBackend().stores()
    stage = DelegationContext(VERIFIER, stores.revocations)
    token, claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    await stores.revocations.revoke_token(claims.jti, time.time() + 60)
    with pytest.raises(DelegationTokenRevokedError):
        await stage(ctx(headers={"a2a-delegation": token}), Next())
    other, other_claims = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    await stores.revocations.kill_tree(other_claims.tree, time.time() + 60)
    with pytest.raises(TreeKilledError):
        await stage(ctx(headers={"a2a-delegation": other}), Next())


async def test_a_token_from_another_broker_is_refused() -> None:
    stranger = TokenMinter(BrokerKeys(Ed25519PrivateKey.generate()), ISSUER, 600)
    token, _ = stranger.mint_origin("origin", "a", hop_scope("SendMessage"))
    call_next = Next()
    with pytest.raises(DelegationTokenInvalidError):
        await DelegationContext(VERIFIER, MemoryBackend().stores().revocations)(
            ctx(headers={"a2a-delegation": token}), call_next
        )
    assert not call_next.called


# --- ChainPolicy ---------------------------------------------------------------------------------


async def test_policy_allows_a_hop_its_rules_allow_and_records_the_rule() -> None:
    rules = "p, a, b, *, allow\np, a, *, originate, allow\n"
    stage = ChainPolicy(_engine(rules), DelegationSettings())
    call_next = Next()
    await stage(ctx(), call_next)
    assert "p, a, b" in call_next.seen[0].policy_rule
    assert call_next.seen[0].policy_version


async def test_policy_refuses_a_hop_no_rule_allows_and_an_origin_it_may_not_start() -> None:
    call_next = Next()
    with pytest.raises(PolicyDeniedError):
        await ChainPolicy(_engine("p, a, *, originate, allow\n"), DelegationSettings())(
            ctx(), call_next
        )
    with pytest.raises(DelegationRequiredError):
        await ChainPolicy(_engine("p, a, b, *, allow\n"), DelegationSettings())(ctx(), call_next)
    assert not call_next.called


async def test_without_a_policy_every_hop_passes_but_a_cycle_does_not() -> None:
    call_next = Next()
    await ChainPolicy(None, DelegationSettings())(ctx(), call_next)
    assert call_next.seen[0].policy_version == "none"
    looping = ctx(caller="a", target="b")
    looping.chain = ("b", "a")
    with pytest.raises(CycleDetectedError):
        await ChainPolicy(None, DelegationSettings())(looping, Next())


# --- MintHopToken --------------------------------------------------------------------------------


async def test_the_minted_token_names_the_target_the_chain_and_the_hop_s_scope() -> None:
    call_next = Next()
    asked = ctx()
    asked.deadline_s = 30.0
    await MintHopToken(MINTER, default_deadline_s=600.0)(asked, call_next)
    seen = call_next.seen[0]
    assert seen.hop is not None and seen.hop_token
    claims = VERIFIER.verify_presented(seen.hop_token, "b")
    assert claims.aud == "b" and claims.chain == ("a",) and claims.scope == "a2a:SendMessage"
    assert claims.dl <= time.time() + 31  # the caller's deadline only shortens the default


async def test_a_hop_under_delegation_continues_the_parent_s_tree() -> None:
    _, parent = MINTER.mint_origin("origin", "a", hop_scope("SendMessage"))
    asked = ctx()
    asked.parent, asked.chain = parent, ("origin", "a")
    call_next = Next()
    await MintHopToken(MINTER, default_deadline_s=600.0)(asked, call_next)
    hop = call_next.seen[0].hop
    assert hop is not None and hop.tree == parent.tree and hop.depth == parent.depth + 1


# --- TaskScope -----------------------------------------------------------------------------------


async def _refuse_push(url: str) -> None:
    raise EgressDeniedError(f"Egress refused: {url}")


async def test_a_task_is_reached_only_by_the_caller_that_created_it() -> None:
    stores = MemoryBackend().stores()
    await stores.task_routes.claim(TaskRoute(agent="b", task_id="t1", owner="a"), 60)
    stage = TaskScope(stores.task_routes, _refuse_push, PageTokens(KEYS))
    mine = ctx(operation=GET_TASK)
    mine.reading = Reading(task_id="t1", named_tasks=("t1",))
    call_next = Next()
    await stage(mine, call_next)
    assert call_next.called
    for caller, task in [("intruder", "t1"), ("a", "unknown")]:
        theirs = ctx(caller=caller, operation=GET_TASK)
        theirs.reading = Reading(task_id=task, named_tasks=(task,))
        refused = Next()
        with pytest.raises(TaskNotFoundError):  # "not yours" and "no such task" look alike
            await stage(theirs, refused)
        assert not refused.called


async def test_a_push_url_passes_the_egress_check_before_anything_leaves() -> None:
    stage = TaskScope(MemoryBackend().stores().task_routes, _refuse_push, PageTokens(KEYS))
    pushing = ctx()
    pushing.reading = Reading(push_url="http://169.254.169.254/")
    call_next = Next()
    with pytest.raises(EgressDeniedError):
        await stage(pushing, call_next)
    assert not call_next.called

"""Everything one broker process runs on, built once at start-up, and the pipeline's order."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from broker.audit.export import Exporter
from broker.audit_export_runtime import start_exporters
from broker.audit_runtime import AuditRecorder, open_recorder
from broker.budget_scopes import ConfiguredScopes
from broker.cards import CardVerifier, rewrite_for_broker, sign_card
from broker.control import Controls
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.directory import AgentDirectory
from broker.egress import check_push_url
from broker.errors import BrokerError
from broker.global_kill import RefuseWhileKilled
from broker.keys import BrokerKeys
from broker.killswitch import LiveStreamCheck, TreeKiller
from broker.llm.gateway import LlmGateway, LlmParts
from broker.llm.roles import AgentRoles
from broker.pipeline import fold
from broker.policy_runtime import PolicyRuntime
from broker.responses import ResponseInspector
from broker.settings import Settings
from broker.stages.audit import AuditForward
from broker.stages.authenticate import Authenticate
from broker.stages.boundary import ErrorBoundary
from broker.stages.budget import HopBudget
from broker.stages.delegation import DelegationContext
from broker.stages.forward import Forward
from broker.stages.guards import CascadeGuards
from broker.stages.mint import MintHopToken
from broker.stages.parse import ParseRequest
from broker.stages.policy import ChainPolicy
from broker.stages.resolve import ResolveTarget
from broker.stages.task_scope import TaskScope
from broker.stores.base import StoreBackend, Stores
from broker.stores.factory import open_backend
from broker.types import CallNext, Stage
from broker.upstream import AiohttpUpstream
from broker.upstream_client import UpstreamClient

log = logging.getLogger("a2a_broker")


@dataclass(slots=True)
class BrokerRuntime:
    settings: Settings
    backend: StoreBackend
    stores: Stores
    keys: BrokerKeys
    upstream: UpstreamClient
    directory: AgentDirectory
    authenticate: Authenticate
    policy: PolicyRuntime
    trees: TreeKiller
    audit: AuditRecorder
    exporters: list[Exporter]
    roles: AgentRoles
    budget_scopes: ConfiguredScopes
    llm: LlmGateway
    expiry: asyncio.Task[None]
    mediate: CallNext
    # Read caches kept current on every replica, and the global kill switch (control.py).
    controls: Controls

    @classmethod
    async def start(cls, settings: Settings) -> BrokerRuntime:
        backend = open_backend(settings.store)
        controls = await Controls.start(settings, backend.stores())
        stores = controls.stores
        keys = BrokerKeys.from_settings(settings)
        if not settings.keys.signing_key_file:
            log.warning("no [keys] signing_key_file: using an ephemeral signing key")
        upstream = UpstreamClient(settings.egress, settings.limits, settings.registry)
        directory = AgentDirectory(
            settings, stores, keys, CardVerifier.from_settings(settings), upstream.fetch_card
        )
        audit = await open_recorder(settings, keys)
        policy = await PolicyRuntime.start(settings, audit)
        audit.policy_version = policy.version
        minter = TokenMinter(keys, settings.public_url, settings.delegation.token_ttl_s)
        authenticate = Authenticate(stores.credentials, stores.registry)
        roles = AgentRoles(policy.engine)
        budget_scopes = ConfiguredScopes(settings.budgets, stores.budget_limits)
        llm = LlmGateway(
            LlmParts(
                llm=settings.llm,
                limits=settings.limits,
                authenticate=authenticate,
                policy=policy.engine,
                verifier=TokenVerifier(keys, settings.public_url),
                revocations=stores.revocations,
                client=upstream,
                ledger=stores.budgets,
                limiter=stores.rate_limiter,
                scopes=budget_scopes,
                audit=audit,
                kill=controls.kill,
            )
        )
        runtime = cls(
            settings=settings,
            backend=backend,
            stores=stores,
            keys=keys,
            upstream=upstream,
            directory=directory,
            authenticate=authenticate,
            policy=policy,
            trees=TreeKiller(settings, stores, upstream, minter, audit),
            audit=audit,
            exporters=start_exporters(settings, audit.trail.log if audit.trail else None),
            roles=roles,
            budget_scopes=budget_scopes,
            llm=llm,
            expiry=asyncio.create_task(
                _expire_reservations(stores, settings), name="budget-expiry"
            ),
            mediate=_unset,
            controls=controls,
        )
        runtime.mediate = fold(pipeline_stages(runtime))
        if settings.registry.cards_dir:
            await directory.load_declarative(settings.path(settings.registry.cards_dir))
        return runtime

    async def close(self) -> None:
        self.expiry.cancel()
        await self.policy.stop()
        for exporter in self.exporters:
            await exporter.stop()
        await self.audit.close()
        await self.upstream.close()
        await self.controls.stop()
        await self.backend.close()


async def _expire_reservations(stores: Stores, settings: Settings) -> None:
    """Reclaim reservations of broker processes that died before settling (every replica runs
    this; the store's script makes each reclaim happen once)."""
    while True:
        await asyncio.sleep(settings.budgets.expire_interval_s)
        try:
            await stores.budgets.expire()
        except BrokerError as err:
            log.warning("budget reservations not expired this round: %s", err.reason)


async def _unset(_: Any) -> Any:
    raise RuntimeError("the pipeline is not built yet")


def pipeline_stages(rt: BrokerRuntime) -> list[Stage]:
    """The order of mediation, and why each stage stands where it does."""
    settings, stores = rt.settings, rt.stores

    def rewrite_card(card: dict[str, Any], name: str) -> dict[str, Any]:
        return sign_card(rewrite_for_broker(card, name, settings.public_url), rt.keys)

    async def push_url_allowed(url: str) -> None:
        await check_push_url(rt.upstream.policy, url)

    inspector = ResponseInspector(
        stores.task_routes, settings.store.task_route_ttl_s, rewrite_card
    )
    issuer = settings.public_url
    return [
        # Outermost, so every refusal from any stage gets the binding's error shape and every
        # request exactly one log line, streams included.
        ErrorBoundary(rt.audit),
        # Before the body is read or anything is looked up for the caller: an unauthenticated
        # request costs one hash and one store read.
        rt.authenticate,
        # Limits before decoding; only the envelope is decoded. Needs no store.
        ParseRequest(settings.limits),
        # The global kill switch (a flag in memory) once the operation is known, so a
        # CancelTask, which stops work, still passes; before anything is looked up.
        RefuseWhileKilled(rt.controls.kill),
        # The target must exist, be active and offer the binding before anything else is asked.
        ResolveTarget(stores.registry),
        # The chain comes only from a token the broker minted for this caller, so the policy
        # below judges what really happened, not what a body or header claims.
        DelegationContext(TokenVerifier(rt.keys, issuer), stores.revocations),
        # Policy before any counter or budget moves, so a denied hop costs nothing.
        ChainPolicy(rt.policy.engine, settings.delegation),
        # Depth, fan-out and tree size: after policy (a refused hop counts nothing), before the
        # token is minted, so a refused child never exists.
        CascadeGuards(stores.delegation_counters, settings.delegation, settings.limits),
        # Ownership of task-scoped calls and push URL egress checks, before anything leaves.
        TaskScope(stores.task_routes, push_url_allowed),
        # The last decision is made: mint the target's token, scoped to what was allowed.
        MintHopToken(
            TokenMinter(rt.keys, issuer, settings.delegation.token_ttl_s),
            settings.delegation.default_deadline_s,
        ),
        # Rate limits and budgets last among the checks (after policy and guards, so a refused
        # hop spends nothing), once the tree is known: one atomic reserve for every budget.
        HopBudget(stores, settings.budgets, rt.budget_scopes, rt.roles),
        # Every decision is made: record it (with the token) durably before anything leaves,
        # and the outcome when the answer ends. No audit log, no forwarding.
        AuditForward(rt.audit),
        # Innermost: relays the caller's bytes and records the routes of new tasks.
        Forward(
            AiohttpUpstream(rt.upstream),
            settings.limits,
            settings.upstream_credentials,
            inspector,
            # Open streams end within about a second of a suspension, a tree kill or the
            # global kill switch.
            recheck=LiveStreamCheck(stores, rt.controls.kill),
        ),
    ]

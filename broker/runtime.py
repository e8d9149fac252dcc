"""Everything one broker process runs on, built once at start-up, and the pipeline's order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from broker.cards import CardVerifier, rewrite_for_broker, sign_card
from broker.directory import AgentDirectory
from broker.egress import EgressPolicy, check_push_url
from broker.keys import BrokerKeys
from broker.pipeline import fold
from broker.responses import ResponseInspector
from broker.settings import Settings
from broker.stages.authenticate import Authenticate
from broker.stages.boundary import ErrorBoundary
from broker.stages.forward import Forward
from broker.stages.parse import ParseRequest
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
    mediate: CallNext

    @classmethod
    async def start(cls, settings: Settings) -> BrokerRuntime:
        backend = open_backend(settings.store)
        stores = backend.stores()
        keys = BrokerKeys.from_settings(settings)
        if not settings.keys.signing_key_file:
            log.warning("no [keys] signing_key_file: using an ephemeral signing key")
        upstream = UpstreamClient(settings.egress, settings.limits, settings.registry)
        egress = upstream.policy
        directory = AgentDirectory(
            settings, stores, keys, CardVerifier.from_settings(settings), upstream.fetch_card
        )
        authenticate = Authenticate(stores.credentials, stores.registry)
        runtime = cls(
            settings=settings,
            backend=backend,
            stores=stores,
            keys=keys,
            upstream=upstream,
            directory=directory,
            authenticate=authenticate,
            mediate=fold(
                pipeline_stages(
                    settings=settings,
                    stores=stores,
                    keys=keys,
                    upstream=upstream,
                    egress=egress,
                    authenticate=authenticate,
                )
            ),
        )
        if settings.registry.cards_dir:
            await directory.load_declarative(settings.path(settings.registry.cards_dir))
        return runtime

    async def close(self) -> None:
        await self.upstream.close()
        await self.backend.close()


def pipeline_stages(
    *,
    settings: Settings,
    stores: Stores,
    keys: BrokerKeys,
    upstream: UpstreamClient,
    egress: EgressPolicy,
    authenticate: Authenticate,
) -> list[Stage]:
    """The order of mediation, and why each stage stands where it does."""

    def rewrite_card(card: dict[str, Any], name: str) -> dict[str, Any]:
        return sign_card(rewrite_for_broker(card, name, settings.public_url), keys)

    async def push_url_allowed(url: str) -> None:
        await check_push_url(egress, url)

    inspector = ResponseInspector(stores.task_routes, settings.store.task_route_ttl_s, rewrite_card)
    return [
        # Outermost, so every refusal from any stage gets the binding's error shape and every
        # request exactly one log line, streams included.
        ErrorBoundary(),
        # Before the body is read or anything is looked up for the caller: an unauthenticated
        # request costs one hash and one store read.
        authenticate,
        # Limits before decoding; only the envelope is decoded. Needs no store.
        ParseRequest(settings.limits),
        # The target must exist, be active and offer the binding before any task lookup.
        ResolveTarget(stores.registry),
        # Ownership of task-scoped calls and push URL egress checks, before anything leaves.
        TaskScope(stores.task_routes, push_url_allowed),
        # Innermost: relays the caller's bytes and records the routes of new tasks.
        Forward(
            AiohttpUpstream(upstream), settings.limits, settings.upstream_credentials, inspector
        ),
    ]

"""The composition root: everything one broker process runs on, built once at start-up.

It only wires: the order of each pipeline is in ``broker.pipeline`` (``a2a``, ``llm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from broker.alerts.service import Alerts, open_alerts
from broker.approvals.a2a import A2aApprovals
from broker.approvals.desk import ApprovalDesk
from broker.approvals.webhook import ApprovalWebhook
from broker.audit.export import Exporter
from broker.audit.export.runtime import start_exporters
from broker.audit.recorder import AuditRecorder, open_recorder
from broker.background import BackgroundTasks
from broker.budgets.ahead import ReservingAhead
from broker.budgets.scopes import ConfiguredScopes
from broker.containment.tree_kill import TreeKiller
from broker.datacontrols import DataControls, open_controls
from broker.delegation.tokens import TokenMinter, TokenVerifier, bmac_key
from broker.errors import BrokerError, StoreUnavailableError
from broker.identity.cards import BrokerCardRewriter, CardVerifier, card_key_ids
from broker.identity.directory import AgentDirectory, DeclarativeCardError
from broker.identity.keys import BrokerKeys
from broker.late_writes import LateWrites
from broker.mcp.directory import McpServerDirectory
from broker.mcp.held_credentials import HeldCredentials
from broker.mcp.servers import registry_from_settings
from broker.mcp.sessions import Sealer, derive_seal_key
from broker.observability.metrics import register_scrape_gauge, scrape_gauges
from broker.observability.tracing import traced
from broker.observability.tracing_setup import start_tracing
from broker.outbound.egress import PushUrlEgress
from broker.outbound.http11 import Http11Transport
from broker.pipeline.a2a import A2aParts, a2a_stages, resume_stages
from broker.pipeline.llm import LlmGateway, LlmParts
from broker.pipeline.mcp import McpGateway, McpParts
from broker.pipeline.stage import fold
from broker.policy.roles import AgentRoles
from broker.policy.runtime import PolicyRuntime
from broker.protocols.a2a.task_pages import PageTokens
from broker.runtime.control import Controls
from broker.runtime.late_routes import with_late_routes
from broker.runtime.traffic import SharedTraffic
from broker.settings import Settings
from broker.stages.authenticate import Authenticate
from broker.stages.responses import ResponseInspector
from broker.stores.approvals_base import PENDING
from broker.stores.base import StoreBackend, Stores
from broker.stores.factory import open_backend
from broker.types import AgentRecord, CallNext

log = logging.getLogger("a2a_broker")
# Every replica re-reads the run-time MCP servers this often, should a control message be lost.
MCP_RESYNC_S = 5.0


@dataclass(slots=True)
class BrokerRuntime:
    settings: Settings
    backend: StoreBackend
    stores: Stores
    keys: BrokerKeys
    upstream: Http11Transport
    directory: AgentDirectory
    authenticate: Authenticate
    policy: PolicyRuntime
    trees: TreeKiller
    audit: AuditRecorder
    exporters: list[Exporter]
    roles: AgentRoles
    budget_scopes: ConfiguredScopes
    llm: LlmGateway
    mcp: McpGateway
    mcp_servers: McpServerDirectory  # MCP servers: the configured and the run-time ones
    expiry: asyncio.Task[None]
    late_writes: LateWrites  # store writes that follow an answer, retried until they land
    mediate: CallNext
    # Read caches kept current on every replica, and the global kill switch (control.py).
    controls: Controls
    # Every background task of the process runs here; ``close`` ends them last (0027).
    tasks: BackgroundTasks
    # Calls held for a human's approval: requests, decisions, expiry (docs/approvals.md).
    approvals: ApprovalDesk
    a2a_approvals: A2aApprovals
    # Flushes and stops the spans of [tracing] (nothing to do when spans are off).
    stop_tracing: Callable[[], None] = lambda: None
    alerts: Alerts | None = None  # [alerts] (None when off)
    traffic: SharedTraffic | None = None  # the console's live traffic (None without console)

    @classmethod
    async def start(cls, settings: Settings) -> BrokerRuntime:
        """Open everything; a failure part-way closes what was already open (no leaked client
        sessions or tasks) and raises the failure."""
        async with contextlib.AsyncExitStack() as opened:
            runtime = await cls._open(settings, opened)
            opened.pop_all()  # from here on, close() owns them
        return runtime

    @classmethod
    async def _open(cls, settings: Settings, opened: contextlib.AsyncExitStack) -> BrokerRuntime:
        tasks = BackgroundTasks()
        opened.push_async_callback(tasks.close)
        # Before the pipelines are folded: with spans on, each stage is wrapped once for its event.
        stop_tracing = start_tracing(settings.tracing)
        opened.callback(stop_tracing)
        backend = open_backend(settings.store)
        opened.push_async_callback(backend.close)
        await backend.start_checks()  # a Redis of another topology, or one that evicts: stop
        controls = await Controls.start(settings, backend.stores(), tasks)
        opened.push_async_callback(controls.stop)
        stores = controls.stores
        keys = BrokerKeys.from_settings(settings)
        if not settings.keys.signing_key_file:
            log.warning("no [keys] signing_key_file: using an ephemeral signing key")
        audit = await open_recorder(settings, keys, tasks)
        opened.push_async_callback(audit.close)
        late_writes = LateWrites((StoreUnavailableError,), tasks=tasks)
        opened.push_async_callback(late_writes.close)
        stores = with_late_routes(stores, late_writes, audit)
        stores = _reserving_ahead(stores, settings, opened)
        upstream = Http11Transport(settings.egress, settings.limits, settings.registry)
        opened.push_async_callback(upstream.close)
        directory = AgentDirectory(
            settings, stores, keys, CardVerifier.from_settings(settings), upstream.fetch_card
        )
        mcp_servers = await _open_mcp_servers(
            settings, keys, stores, upstream, controls=controls, tasks=tasks
        )
        policy = await PolicyRuntime.start(settings, audit, tasks)
        opened.push_async_callback(policy.stop)
        audit.policy_version = policy.version
        # Built once, shared by both pipelines and the tree killer.
        minter = TokenMinter(keys, settings.public_url, settings.delegation.token_ttl_s)
        verifier = TokenVerifier(keys, settings.public_url)
        authenticate = Authenticate(stores.credentials, stores.registry)
        roles = AgentRoles(policy.engine)
        budget_scopes = ConfiguredScopes(settings.budgets, stores.budget_limits)
        datacontrols = open_controls(settings.datacontrols)  # None when they are off
        approvals = _approval_desk(settings, stores, audit, upstream, tasks)
        llm = LlmGateway(
            LlmParts(
                llm=settings.llm,
                limits=settings.limits,
                authenticate=authenticate,
                policy=policy.engine,
                verifier=verifier,
                revocations=stores.revocations,
                client=upstream,
                ledger=stores.budgets,
                limiter=stores.rate_limiter,
                scopes=budget_scopes,
                audit=audit,
                containment=settings.containment,
                kill=controls.kill,
                roles=roles,
                tasks=tasks,
                datacontrols=datacontrols,
                approvals=approvals,
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
            exporters=start_exporters(settings, audit.trail.log if audit.trail else None, tasks),
            roles=roles,
            budget_scopes=budget_scopes,
            llm=llm,
            mcp=McpGateway(McpParts(
                settings=settings,
                stores=stores,
                audit=audit,
                authenticate=authenticate,
                policy=policy.engine,
                minter=minter,
                verifier=verifier,
                roles=roles,
                budget_scopes=budget_scopes,
                kill=controls.kill,
                transport=upstream,
                registry=mcp_servers.registry,
                sealer=mcp_sealer(settings, keys, os.environ),
                tasks=tasks,
                approvals=approvals,
                datacontrols=datacontrols,
            )),
            mcp_servers=mcp_servers,
            expiry=tasks.spawn(_expire_reservations(stores, settings), "budget-expiry"),
            late_writes=late_writes,
            mediate=_unset,
            controls=controls,
            tasks=tasks,
            approvals=approvals,
            a2a_approvals=A2aApprovals(
                approvals, stores.task_routes, settings.limits.sse_heartbeat_s
            ),
            stop_tracing=stop_tracing,
        )
        opened.push_async_callback(runtime._stop_background_work)
        _watch_requests(runtime, opened)
        stages = a2a_stages(_a2a_parts(runtime, minter, verifier, datacontrols))
        runtime.mediate = fold(traced(stages))
        # An approved call goes through the pipeline again from its policy on.
        runtime.a2a_approvals.resume = fold(traced(resume_stages(stages)))
        approvals.on_approved = runtime.a2a_approvals.forward_unwatched
        tasks.spawn(approvals.sweep_forever(), "approvals-sweep")
        # Always: [agents.NAME] credentials bind even with no cards_dir (caller-only identities).
        cards_dir = settings.registry.cards_dir
        try:
            cards = await directory.load_declarative(
                settings.path(cards_dir) if cards_dir else None
            )
        except DeclarativeCardError as exc:
            await _audit_declarative_refusal(audit, exc)
            raise
        for card in cards:
            await runtime.card_registered(card)
        return runtime

    async def card_registered(self, record: AgentRecord) -> None:
        """An agent card was registered or replaced: the new-card-key alert rule sees it."""
        if self.alerts is not None:
            await self.alerts.card_registered(record.name, card_key_ids(record.card_json))

    async def close(self) -> None:
        await self._stop_background_work()
        await self.policy.stop()
        await self.audit.close()
        await self.upstream.close()
        if isinstance(self.stores.budgets, ReservingAhead):
            await self.stores.budgets.close()  # what it reserved ahead, given back
        await self.late_writes.close()
        await self.controls.stop()
        await self.tasks.close()
        await self.backend.close()
        self.stop_tracing()

    async def _stop_background_work(self) -> None:
        self.expiry.cancel()
        if self.alerts is not None:
            await self.alerts.stop()
        if self.traffic is not None:
            await self.traffic.stop()
        scrape_gauges.pop("approvals_pending", None)  # it reads this runtime's store
        for exporter in self.exporters:
            await exporter.stop()


def _reserving_ahead(
    stores: Stores, settings: Settings, opened: contextlib.AsyncExitStack
) -> Stores:
    """``stores`` whose budget ledger serves one-call reserves ahead (``broker.budgets.ahead``),
    where a reserve is a round trip (the redis store) and ``[budgets] reserve_ahead`` allows."""
    budgets = settings.budgets
    if settings.store.backend != "redis" or budgets.reserve_ahead == 0:
        return stores
    ledger = ReservingAhead(
        stores.budgets,
        most=budgets.reserve_ahead,
        headroom=budgets.reserve_ahead_headroom,
        ttl_s=budgets.reservation_ttl_s,
    )
    opened.push_async_callback(ledger.close)  # released if the start fails further on
    return msgspec.structs.replace(stores, budgets=ledger)


def _watch_requests(runtime: BrokerRuntime, opened: contextlib.AsyncExitStack) -> None:
    """What watches the broker for operators: the anomaly alerts, the approvals gauge read at
    scrape time, the console's live traffic."""
    settings, tasks = runtime.settings, runtime.tasks
    runtime.alerts = open_alerts(
        settings.alerts,
        runtime.backend.alert_state(),
        runtime.audit,
        runtime.upstream,
        tasks,
        environ=dict(os.environ),
    )
    if runtime.alerts is not None:
        runtime.alerts.start(tasks, runtime.stores.budgets, runtime.budget_scopes)
        opened.push_async_callback(runtime.alerts.stop)
    approvals = runtime.stores.approvals

    async def pending() -> list[tuple[tuple[str, ...], float]]:
        now = time.time()
        counts = dict.fromkeys(("a2a", "llm"), 0)
        for kept in await approvals.list():
            if kept.state == PENDING and kept.expires_at > now:
                counts[kept.protocol] = counts.get(kept.protocol, 0) + 1
        return [((protocol,), float(count)) for protocol, count in counts.items()]

    help_text = "Calls held for a human's approval and not yet decided, by protocol."
    register_scrape_gauge("approvals_pending", help_text, ("protocol",), pending)
    opened.callback(scrape_gauges.pop, "approvals_pending", None)
    if settings.console.enabled:
        keep = settings.console.recent_requests
        runtime.traffic = SharedTraffic(runtime.backend.recent_traffic(), keep)
        runtime.traffic.start(tasks)
        opened.push_async_callback(runtime.traffic.stop)


def _approval_desk(
    settings: Settings,
    stores: Stores,
    audit: AuditRecorder,
    upstream: Http11Transport,
    tasks: BackgroundTasks,
) -> ApprovalDesk:
    webhook = ApprovalWebhook.from_settings(
        settings.approvals.webhook, os.environ, upstream, settings.public_url, tasks
    )
    return ApprovalDesk(
        stores.approvals, settings.approvals, audit, stores.registry, stores.revocations,
        notify=webhook, tasks=tasks,
    )  # fmt: skip


async def _expire_reservations(stores: Stores, settings: Settings) -> None:
    """Reclaim reservations of broker processes that died before settling (every replica runs
    this; the store's script makes each reclaim happen once)."""
    while True:
        await asyncio.sleep(settings.budgets.expire_interval_s)
        try:
            await stores.budgets.expire()
        except BrokerError as err:
            log.warning("budget reservations not expired this round: %s", err.reason)


async def _audit_declarative_refusal(audit: AuditRecorder, exc: DeclarativeCardError) -> None:
    """A card refused at start-up is a refused registration too: it is audited."""
    try:
        detail = str(exc)[:300]
        await audit.event("registry.refused", "a2a-broker", action="declarative", error=detail)
    except BrokerError as err:
        log.error("refused declarative card not audited: %s", err.reason)  # noqa: TRY400


async def _unset(_: Any) -> Any:
    raise RuntimeError("the pipeline is not built yet")


def mcp_seal_secret(settings: Settings, keys: BrokerKeys, env: Mapping[str, str]) -> bytes:
    """What MCP session ids, cursors and held credentials are sealed under: ``[mcp]
    seal_key_env``, else the signing key (the same on every replica that shares the key file)."""
    name = settings.mcp.seal_key_env
    secret = env.get(name, "").encode() if name else b""
    return secret or bmac_key(keys)


def mcp_sealer(settings: Settings, keys: BrokerKeys, env: Mapping[str, str]) -> Sealer:
    """The key that seals MCP session ids and cursors (``mcp_seal_secret``)."""
    return Sealer([derive_seal_key(mcp_seal_secret(settings, keys, env))])


async def _open_mcp_servers(
    settings: Settings, keys: BrokerKeys, stores: Stores, upstream: Http11Transport,
    *, controls: Controls, tasks: BackgroundTasks,
) -> McpServerDirectory:
    """The MCP servers: those of ``[mcp.servers]``, checked now (a bad one stops the start),
    and those registered at run time, read from the store and kept current on every replica."""
    registry = registry_from_settings(settings.mcp, os.environ, upstream.egress.check_url)
    directory = McpServerDirectory(
        registry, stores.mcp_servers, upstream.egress,
        HeldCredentials(mcp_seal_secret(settings, keys, os.environ)),
        configured=settings.mcp.servers,
        environ=os.environ,
        notify=lambda name: controls.publish_change("mcp", name),
    )
    controls.mcp_changed = directory.sync
    try:
        await directory.sync()
    except StoreUnavailableError as err:  # fail closed per request, not at start-up
        log.warning("run-time MCP servers not read at start: %s", err.reason)
    if settings.store.backend == "redis":
        tasks.spawn(directory.sync_forever(MCP_RESYNC_S), "mcp-servers-resync")
    return directory


def _a2a_parts(
    rt: BrokerRuntime,
    minter: TokenMinter,
    verifier: TokenVerifier,
    datacontrols: DataControls | None = None,
) -> A2aParts:
    settings, keys = rt.settings, rt.keys

    pages = PageTokens(keys)
    inspector = ResponseInspector(
        rt.stores.task_routes, settings.store.task_route_ttl_s,
        BrokerCardRewriter(settings.public_url, keys), pages,
        finished_ttl_s=settings.store.finished_task_ttl_s, trees=rt.stores.task_trees,
    )  # fmt: skip
    return A2aParts(
        settings=settings,
        stores=rt.stores,
        audit=rt.audit,
        authenticate=rt.authenticate,
        policy=rt.policy.engine,
        minter=minter,
        verifier=verifier,
        roles=rt.roles,
        budget_scopes=rt.budget_scopes,
        late_writes=rt.late_writes,
        kill=rt.controls.kill,
        transport=rt.upstream,
        inspector=inspector,
        pages=pages,
        push_url_allowed=PushUrlEgress(rt.upstream.egress),
        tasks=rt.tasks,
        datacontrols=datacontrols,
        approvals=rt.a2a_approvals,
    )

"""The policy a broker process runs with, kept current by the reloader."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.errors import BrokerError
from broker.policy.decision import NO_POLICY_VERSION
from broker.policy.engine import PolicyEngine, PolicySnapshot
from broker.policy.reload import PolicyReloader
from broker.policy.rules import PolicyError
from broker.settings import Settings, SettingsError
from broker.stores.redis_client import RedisClient, open_redis

log = logging.getLogger("a2a_broker.policy")

# The model shipped with the broker (package data; policies/model.conf is the same file for
# operators to read), used when [policy] model_file is not set.
DEFAULT_MODEL = Path(__file__).resolve().parent / "model.conf"


@dataclass(slots=True)
class PolicyRuntime:
    """``engine`` is None when no policy file is configured (every hop allowed)."""

    engine: PolicyEngine | None
    reloader: PolicyReloader | None = None
    redis: RedisClient | None = None

    @classmethod
    async def start(
        cls, settings: Settings, audit: AuditRecorder, tasks: BackgroundTasks | None = None
    ) -> PolicyRuntime:
        """Load the policy (a bad or empty file stops start-up: there is no last good one yet).

        Raises ``SettingsError`` when there is no policy file and ``allow_all`` is not set (or
        both are), ``PolicyError`` for a file that does not load.
        """
        if check_policy_settings(settings):
            log.warning("[policy] allow_all = true: every authenticated agent may call every agent")
            return cls(None)
        model = settings.path(settings.policy.model_file) if settings.policy.model_file else None
        policy_path = settings.path(settings.policy.policy_file)
        engine = PolicyEngine.from_files(model or DEFAULT_MODEL, policy_path)
        client = None
        if settings.store.backend == "redis":
            client = open_redis(settings.store)
        reloader = PolicyReloader(
            engine,
            policy_path,
            interval_s=settings.policy.reload_interval_s,
            on_error=_audited(audit),
            on_applied=_audited_reload(audit),
            redis=client,
            channel=f"{settings.store.key_prefix}:{settings.policy.channel}",
            tasks=tasks,
        )
        await reloader.start()
        log.info("policy %s loaded (version %s)", policy_path, engine.version[:12])
        await _audited_reload(audit)(engine.snapshot, str(policy_path))
        return cls(engine, reloader, client)

    def version(self) -> str:
        """The version of the policy in force (``none`` without a policy file)."""
        return self.engine.version if self.engine is not None else NO_POLICY_VERSION

    async def stop(self) -> None:
        if self.reloader is not None:
            await self.reloader.stop()
        if self.redis is not None:
            await self.redis.aclose()


def check_policy_settings(settings: Settings) -> bool:
    """True when every hop is allowed (``allow_all``); raises ``SettingsError`` unless exactly
    one of ``policy_file`` and ``allow_all`` is set: a broker never allows everything by
    omission."""
    policy = settings.policy
    if policy.allow_all and policy.policy_file:
        raise SettingsError(
            "[policy] sets both policy_file and allow_all = true: choose one (allow_all would"
            " ignore every rule of the file)"
        )
    if not policy.allow_all and not policy.policy_file:
        raise SettingsError(
            "no [policy] policy_file: set one (docs/policy.md), or set [policy] allow_all = true"
            " to let every authenticated agent call every agent"
        )
    return policy.allow_all


def _audited_reload(audit: AuditRecorder) -> Callable[[PolicySnapshot, str], Awaitable[None]]:
    """Every policy that takes effect on this replica is one audit record."""

    async def on_applied(snapshot: PolicySnapshot, source: str) -> None:
        try:
            await audit.event(
                "policy.reload", "a2a-broker", version=snapshot.version, source=source[:200]
            )
        except BrokerError as err:
            log.error("policy reload not audited: %s", err.reason)  # noqa: TRY400

    return on_applied


def _audited(audit: AuditRecorder) -> Callable[[PolicyError], Awaitable[None]]:
    """The reloader logs a refused policy file; this records it in the audit too."""

    async def on_error(error: PolicyError) -> None:
        try:
            await audit.event(
                "policy.error", "a2a-broker", file=error.file, line=error.line, error=error.message
            )
        except BrokerError as err:
            log.error("policy refusal not audited: %s", err.reason)  # noqa: TRY400

    return on_error

"""The alerts of one broker process: fed by every finished request, judged off the hot path.

A finished request is appended to a bounded queue (``observe``, called by the request hook:
a deque append). A task drains the queue every ``DRAIN_S``, sums the batch and asks the store
(``AlertRules``); another checks the budgets every ``[alerts] budget_check_interval_s``. An
alert becomes, in order: an audit record (kind ``alert``, so it reaches the SIEM), the
``alerts_total`` metric, a kept alert for the console, and the webhook when one is set.

The store decides whether a threshold was crossed, atomically, so with several replicas on one
Redis each alert is raised by exactly one of them. If the store cannot be reached the batch is
dropped (logged): alerts never hold up or refuse a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from broker.alerts.rules import AlertRules, Batch, Finding
from broker.alerts.webhook import AlertWebhook
from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.budgets.model import Scope, window_end
from broker.budgets.scopes import ConfiguredScopes
from broker.errors import BrokerError
from broker.observability import record
from broker.observability.probes import alert_raised
from broker.observability.record import RequestSeen
from broker.outbound.transport import Transport
from broker.settings import SettingsError
from broker.settings_observability import AlertSettings
from broker.stores.alert_base import Alert, AlertState
from broker.stores.budget_base import BudgetLedger, BudgetStatus

DRAIN_S = 0.5
QUEUE_MAX = 50_000  # requests waiting to be judged; past that the oldest are dropped
log = logging.getLogger("a2a_broker.alerts")


class Alerts:
    def __init__(
        self,
        settings: AlertSettings,
        state: AlertState,
        audit: AuditRecorder,
        webhook: AlertWebhook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self._rules = AlertRules(settings, state)
        self._audit = audit
        self._webhook = webhook
        self._clock = clock
        self._queue: deque[RequestSeen] = deque(maxlen=QUEUE_MAX)
        self._callers: set[str] = set()  # seen since the last budget check
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, tasks: BackgroundTasks, ledger: BudgetLedger, scopes: ConfiguredScopes) -> None:
        """Watch every finished request of this process and run the rules until ``stop``."""
        record.watchers.append(self.observe)
        self._tasks.append(tasks.spawn(self._drain_forever(), "alerts-drain"))
        if self.settings.budget_burn_factor > 0:
            burn = self._burn_forever(ledger, scopes)
            self._tasks.append(tasks.spawn(burn, "alerts-budget-burn"))

    async def stop(self) -> None:
        if self.observe in record.watchers:
            record.watchers.remove(self.observe)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def observe(self, seen: RequestSeen) -> None:
        """One finished request (the request hook: returns at once)."""
        self._queue.append(seen)

    async def drain(self) -> list[Alert]:
        """Judge what is queued now; the alerts raised."""
        batch = [self._queue.popleft() for _ in range(len(self._queue))]
        if not batch:
            return []
        self._callers.update(seen.caller for seen in batch if seen.caller != record.NOBODY)
        try:
            found = await self._rules.judge(Batch.of(batch))
        except BrokerError as err:
            log.warning("alert rules skipped %d requests: %s", len(batch), err.reason)
            return []
        return [await self.raise_alert(finding) for finding in found]

    async def _drain_forever(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_S)
            await self.drain()

    async def check_budgets(self, ledger: BudgetLedger, scopes: ConfiguredScopes) -> list[Alert]:
        """Raise ``budget_burn`` for every budget spent faster than its window allows."""
        callers, self._callers = self._callers, set()
        try:
            await scopes.refresh()
            found: dict[str, Scope] = {}
            for name in ["", *sorted(callers)]:
                for scope in scopes.for_status(name, (), ""):
                    found.setdefault(scope.key(), scope)
            statuses = await ledger.status(list(found.values())) if found else []
            return [alert for s in statuses if (alert := await self._burn(s)) is not None]
        except BrokerError as err:
            log.warning("budget burn check skipped: %s", err.reason)
            return []

    async def _burn_forever(self, ledger: BudgetLedger, scopes: ConfiguredScopes) -> None:
        while True:
            await asyncio.sleep(self.settings.budget_check_interval_s)
            await self.check_budgets(ledger, scopes)

    async def _burn(self, status: BudgetStatus) -> Alert | None:
        end = window_end(status.window, status.window_start)
        if end is None or status.limit <= 0:
            return None  # a lifetime budget has no pace to keep
        now = self._clock()
        spent = (status.used + status.reserved) / status.limit
        gone = max(now - status.window_start, 1.0) / (end - status.window_start)
        if spent < self.settings.budget_burn_min_share:
            return None
        if spent <= self.settings.budget_burn_factor * gone:
            return None
        key = f"budget_burn:{status.scope}:{status.metric}:{status.window}:{status.window_start}"
        if not await self.state.once(key, max(int(end - now), 1) + 60):
            return None  # raised already for this window, here or on another replica
        summary = (f"{status.scope}: {spent:.0%} of its {status.metric} per {status.window} spent "
                   f"with {gone:.0%} of the window gone")  # fmt: skip
        detail: dict[str, str | int] = {"metric": status.metric, "window": status.window,
                                        "limit": status.limit, "used": status.used,
                                        "reserved": status.reserved,
                                        "window_start": status.window_start}  # fmt: skip
        return await self.raise_alert(Finding("budget_burn", status.scope, summary, detail=detail))

    async def card_registered(self, agent: str, kids: Sequence[str]) -> Alert | None:
        """An agent's card was registered or replaced, signed by ``kids``."""
        if not self.settings.new_card_key:
            return None
        try:
            new = await self.state.new_card_keys(agent, kids, self.settings.state_ttl_s)
        except BrokerError as err:
            log.warning("card key rule skipped for %s: %s", agent, err.reason)
            return None
        if not new:
            return None
        summary = f"{agent}'s card is signed with a key its earlier cards were not: {new[0]}"
        finding = Finding("new_card_key", agent, summary, target=agent, detail={"kid": new[0]})
        return await self.raise_alert(finding)

    async def raise_alert(self, finding: Finding) -> Alert:
        alert = Alert(id=uuid.uuid4().hex, rule=finding.rule, subject=finding.subject,
                      at=self._clock(), summary=finding.summary,
                      detail=dict(finding.detail))  # fmt: skip
        await self._record(alert, finding)
        alert_raised(alert.rule)
        try:
            await self.state.add(alert, self.settings.keep_alerts, self.settings.state_ttl_s)
        except BrokerError as err:
            log.warning("alert %s not kept for the console: %s", alert.id, err.reason)
        if self._webhook is not None:
            self._webhook.send_soon(alert)
        log.warning("alert %s: %s", alert.rule, alert.summary)
        return alert

    async def _record(self, alert: Alert, finding: Finding) -> None:
        detail: dict[str, Any] = {"alert.id": alert.id, "alert.subject": alert.subject,
                                  "alert.summary": alert.summary[:500]}  # fmt: skip
        detail.update({f"alert.{k}": v for k, v in alert.detail.items()})
        fields = {"kind": "alert", "caller": finding.caller, "target": finding.target,
                  "reason": alert.rule, "detail": detail}  # fmt: skip
        try:
            await self._audit.record(fields)
        except BrokerError as err:
            log.error("alert %s not audited: %s", alert.id, err.reason)  # noqa: TRY400

    async def acknowledge(self, alert_id: str, by: str) -> bool:
        """Acknowledge a kept alert (audited); False if unknown or acknowledged already."""
        done = await self.state.acknowledge(alert_id, by, self._clock())
        if done:
            await self._audit.event("alert.ack", by, alert_id=alert_id)
        return done


def open_alerts(
    settings: AlertSettings,
    state: AlertState,
    audit: AuditRecorder,
    transport: Transport,
    tasks: BackgroundTasks,
    *,
    environ: dict[str, str],
) -> Alerts | None:
    """The process's alerts as ``[alerts]`` says (None when off). Raises ``SettingsError`` if
    the webhook's key variable is not set, or the egress policy refuses its URL."""
    if not settings.enabled:
        return None
    webhook = None
    if settings.webhook_url:
        secret = environ.get(settings.webhook_key_env, "") if settings.webhook_key_env else ""
        if not secret:
            raise SettingsError(
                "[alerts] webhook_url needs webhook_key_env naming a set environment variable"
            )
        try:
            transport.egress.check_url(settings.webhook_url)
        except BrokerError as err:
            raise SettingsError(f"[alerts] webhook_url: {err}") from None
        webhook = AlertWebhook(transport, settings.webhook_url, secret.encode(), tasks,
                               retries=settings.webhook_retries,
                               timeout_s=settings.webhook_timeout_s)  # fmt: skip
    return Alerts(settings, state, audit, webhook)

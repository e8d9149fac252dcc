"""Alerts posted to an operator's webhook: the alert as JSON, signed and retried by the one
webhook sender (``broker.outbound.webhook``: the signature header, the retry rules). Deliveries
run in the runtime's background tasks and never hold up a request.
"""

from __future__ import annotations

import logging

import msgspec

from broker.background import BackgroundTasks
from broker.observability.probes import alert_webhook_failed
from broker.outbound.transport import Transport
from broker.outbound.webhook import SignedWebhook
from broker.stores.alert_base import Alert

log = logging.getLogger("a2a_broker.alerts")
_encoder = msgspec.json.Encoder()


class AlertWebhook:
    def __init__(
        self,
        transport: Transport,
        url: str,
        secret: bytes,
        tasks: BackgroundTasks,
        *,
        retries: int = 5,
        timeout_s: float = 5.0,
        first_pause_s: float = 0.5,
    ) -> None:
        self._hook = SignedWebhook(transport, url, secret, attempts=retries + 1,
                                   timeout_s=timeout_s, first_pause_s=first_pause_s)
        self._tasks = tasks

    def send_soon(self, alert: Alert) -> None:
        try:
            self._tasks.spawn(self.deliver(alert), "alert-webhook")
        except RuntimeError:  # shutting down
            log.warning("alert %s not sent to the webhook: shutting down", alert.id)

    async def deliver(self, alert: Alert) -> bool:
        """Post ``alert`` until it is accepted or the retries are spent; True if accepted."""
        headers = {"a2a-broker-alert-id": alert.id}
        if await self._hook.deliver(_encoder.encode(alert), headers, f"alert {alert.id}"):
            return True
        alert_webhook_failed()
        return False

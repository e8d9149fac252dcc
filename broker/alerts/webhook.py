"""Alerts posted to an operator's webhook, signed, through the broker's outbound transport.

The body is the alert as JSON. ``A2A-Broker-Signature: t=<unix time>,v1=<hex>`` carries
HMAC-SHA256 over ``<unix time>.<body>`` keyed by the configured secret, so the receiver can
check the sender and refuse replays (docs/observability.md). The transport applies the egress
policy. A delivery that fails (no answer, a 5xx, 408 or 429) is retried with a doubling pause;
other 4xx answers are not retried. Deliveries run in the runtime's background tasks and never
hold up a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

import msgspec

from broker.background import BackgroundTasks
from broker.errors import BrokerError
from broker.observability.probes import alert_webhook_failed
from broker.outbound.transport import Transport
from broker.stores.alert_base import Alert

SIGNATURE_HEADER = "A2A-Broker-Signature"
_RETRIED = frozenset({408, 429})
_MAX_PAUSE_S = 30.0
log = logging.getLogger("a2a_broker.alerts")
_encoder = msgspec.json.Encoder()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


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
        self._transport = transport
        self._url = url
        self._secret = secret
        self._tasks = tasks
        self._retries = retries
        self._timeout_s = timeout_s
        self._first_pause_s = first_pause_s

    def send_soon(self, alert: Alert) -> None:
        try:
            self._tasks.spawn(self.deliver(alert), "alert-webhook")
        except RuntimeError:  # shutting down
            log.warning("alert %s not sent to the webhook: shutting down", alert.id)

    async def deliver(self, alert: Alert) -> bool:
        """Post ``alert`` until it is accepted or the retries are spent; True if accepted."""
        body = _encoder.encode(alert)
        pause = self._first_pause_s
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)
            status = await self._post(body, alert.id)
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status < 500 and status not in _RETRIED:
                break
        log.error("alert %s not delivered to the webhook", alert.id)
        alert_webhook_failed()
        return False

    async def _post(self, body: bytes, alert_id: str) -> int | None:
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, int(time.time()), body),
            "a2a-broker-alert-id": alert_id,
        }
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._transport.send(
                    "POST", self._url, headers=headers, body=body, stream=False
                )
                response.close()
        except (BrokerError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, BrokerError) else "timeout"
            log.warning("alert webhook: %s", reason)
            return None
        return response.status

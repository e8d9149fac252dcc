"""Signed, retried JSON POSTs to an operator's webhook: one sender for every notification the
broker makes (alerts, approvals).

``A2A-Broker-Signature: t=<unix time>,v1=<hex>`` carries HMAC-SHA256 over
``<unix time>.<body>`` keyed by the webhook's secret, so a receiver checks the sender and
refuses replays with one piece of code whatever the notification (docs/observability.md,
docs/approvals.md). The POST goes through the broker's outbound transport, so the egress rules
apply as to any outbound call. A delivery that fails (no answer, a 5xx, 408 or 429) is retried
with a doubling pause; another 4xx is the receiver refusing this body, and is not retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping

from broker.errors import BrokerError
from broker.outbound.transport import Transport

SIGNATURE_HEADER = "A2A-Broker-Signature"
_RETRIED = frozenset({408, 429})
_MAX_PAUSE_S = 30.0
log = logging.getLogger("a2a_broker.webhook")


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``A2A-Broker-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class SignedWebhook:
    """One URL, one secret: ``deliver`` POSTs a body until it is accepted or the attempts are
    spent. Callers run it in the background: a notification never holds up a request."""

    def __init__(
        self,
        transport: Transport,
        url: str,
        secret: bytes,
        *,
        attempts: int,
        timeout_s: float,
        first_pause_s: float,
    ) -> None:
        self._transport = transport
        self.url = url
        self._secret = secret
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._first_pause_s = first_pause_s

    async def deliver(self, body: bytes, headers: Mapping[str, str], what: str) -> bool:
        """POST ``body`` (JSON) with ``headers`` and the signature; True once a 2xx answered.
        ``what`` names the notification in the log lines."""
        pause = self._first_pause_s
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)
            status = await self._post(body, headers, what)
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status < 500 and status not in _RETRIED:
                log.warning("webhook refused %s with HTTP %d: not retried", what, status)
                break
        log.error("%s not delivered to the webhook", what)
        return False

    async def _post(self, body: bytes, extra: Mapping[str, str], what: str) -> int | None:
        headers = {
            **extra,
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, int(time.time()), body),
        }
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._transport.send(
                    "POST", self.url, headers=headers, body=body, stream=False
                )
                try:
                    await response.read(64 * 1024)
                finally:
                    response.close()
        except (BrokerError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, BrokerError) else "timeout"
            log.warning("webhook attempt for %s failed: %s", what, reason)
            return None
        return response.status

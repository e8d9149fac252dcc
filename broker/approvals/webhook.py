"""Tell people an approval awaits them: a generic JSON POST, HMAC-signed, retried.

Each request, decision and ending of an approval is POSTed to ``[approvals.webhook] url``
through the broker's outbound transport, so the egress rules apply as to any outbound call.
The body is JSON (``event``, ``approval``: the record without the held call, ``decide_url``);
``X-A2A-Broker-Signature: sha256=<hex>`` is the HMAC-SHA256, keyed with the secret from
``key_env``, of ``<X-A2A-Broker-Timestamp>.<body>``, so a receiver can check who sent it and
refuse a replay. Failures (no answer, a status other than 2xx) are retried with doubling
back-off, up to ``attempts``; a notification never delays or fails the call it is about.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping

import msgspec

from broker.background import BackgroundTasks
from broker.errors import BrokerError
from broker.outbound.transport import Transport
from broker.settings_approvals import ApprovalWebhookSettings
from broker.stores.approvals_base import ApprovalRecord

log = logging.getLogger("a2a_broker.approvals.webhook")
_encoder = msgspec.json.Encoder()
SIGNATURE_HEADER = "x-a2a-broker-signature"
TIMESTAMP_HEADER = "x-a2a-broker-timestamp"
EVENT_HEADER = "x-a2a-broker-event"
FIRST_BACKOFF_S = 1.0


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The value of ``X-A2A-Broker-Signature`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class ApprovalWebhook:
    def __init__(
        self,
        settings: ApprovalWebhookSettings,
        secret: bytes,
        transport: Transport,
        public_url: str,
        tasks: BackgroundTasks | None,
        *,
        first_backoff_s: float = FIRST_BACKOFF_S,
    ) -> None:
        self._settings = settings
        self._secret = secret
        self._transport = transport
        self._public_url = public_url
        self._tasks = tasks
        self._backoff = first_backoff_s

    @classmethod
    def from_settings(
        cls,
        settings: ApprovalWebhookSettings,
        environ: Mapping[str, str],
        transport: Transport,
        public_url: str,
        tasks: BackgroundTasks | None,
    ) -> ApprovalWebhook | None:
        """None when no URL is set. Raises ValueError when the secret is missing."""
        if not settings.url:
            return None
        secret = environ.get(settings.key_env, "") if settings.key_env else ""
        if not secret:
            raise ValueError(
                "[approvals.webhook] url is set but its secret is not: set key_env to an"
                " environment variable holding the HMAC key"
            )
        return cls(settings, secret.encode(), transport, public_url, tasks)

    def __call__(self, event: str, record: ApprovalRecord) -> None:
        """Send in the background: the caller never waits for (or fails with) a webhook."""
        work = self.send(event, record)
        if self._tasks is not None:
            self._tasks.spawn(work, f"approval webhook {record.id}")
        else:
            asyncio.get_running_loop().create_task(work)

    async def send(self, event: str, record: ApprovalRecord) -> bool:
        """POST one notification, retried; True once a 2xx answered."""
        body = _encoder.encode({
            "event": event,
            "approval": msgspec.to_builtins(record),
            "decide_url": f"{self._public_url}/admin/approvals/{record.id}",
        })
        delay = self._backoff
        for attempt in range(1, self._settings.attempts + 1):
            if await self._post(event, body):
                return True
            if attempt < self._settings.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("approval %s: webhook %s not delivered after %d attempts",
                    record.id, event, self._settings.attempts)
        return False

    async def _post(self, event: str, body: bytes) -> bool:
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            EVENT_HEADER: event,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret, timestamp, body),
        }
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                resp = await self._transport.send(
                    "POST", self._settings.url, headers=headers, body=body, stream=False
                )
                try:
                    await resp.read(64 * 1024)
                finally:
                    resp.close()
        except (BrokerError, TimeoutError) as exc:
            log.info("approval webhook attempt failed: %s", getattr(exc, "reason", "timeout"))
            return False
        return 200 <= resp.status < 300

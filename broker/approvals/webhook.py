"""Tell people an approval awaits them: a generic JSON POST, signed and retried.

Each request, decision and ending of an approval is POSTed to ``[approvals.webhook] url`` by the
one webhook sender (``broker.outbound.webhook``): through the broker's outbound transport, so
the egress rules apply; signed with the secret from ``key_env`` in ``A2A-Broker-Signature``
(``t=<unix time>,v1=<hex HMAC-SHA256 of "<unix time>.<body>">``, as the alerts' webhook), so a
receiver can check who sent it and refuse a replay; retried with doubling back-off, up to
``attempts``. The body is JSON (``event``, ``approval``: the record without the held call,
``decide_url``), the event also in ``X-A2A-Broker-Event``. A notification never delays or fails
the call it is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec

from broker.background import BackgroundTasks
from broker.outbound.transport import Transport
from broker.outbound.webhook import SignedWebhook
from broker.settings_approvals import ApprovalWebhookSettings
from broker.stores.approvals_base import ApprovalRecord

_encoder = msgspec.json.Encoder()
EVENT_HEADER = "x-a2a-broker-event"
FIRST_BACKOFF_S = 1.0


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
        self._hook = SignedWebhook(transport, settings.url, secret, attempts=settings.attempts,
                                   timeout_s=settings.timeout_s, first_pause_s=first_backoff_s)
        self._public_url = public_url
        self._tasks = tasks

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
        what = f"approval {record.id} {event}"
        return await self._hook.deliver(body, {EVENT_HEADER: event}, what)

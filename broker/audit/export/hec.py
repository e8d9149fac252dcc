"""A Splunk HTTP Event Collector (HEC) compatible sink.

Each POST to ``{url}/services/collector/event`` carries newline-separated JSON events with the
OCSF event under ``event`` and the record's identity under ``fields`` (indexed fields), so a
search can drop a batch re-sent after an exporter crash by ``record_hash``. A request counts as
acknowledged only on HTTP 200 with a JSON body whose ``code`` is 0.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Final

import aiohttp
import msgspec

from broker.audit.export.errors import SinkUnavailableError
from broker.audit.export.ocsf import PRODUCT_NAME, ExportItem
from broker.audit.export.sinks import Sink

SOURCETYPE: Final = "ocsf:api_activity"
EVENT_PATH: Final = "/services/collector/event"


class _HecEvent(msgspec.Struct, frozen=True):
    time: float
    host: str
    source: str
    sourcetype: str
    fields: dict[str, str]
    event: msgspec.Raw


class _HecReply(msgspec.Struct, frozen=True):
    code: int
    text: str = ""


_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(_HecReply)


def hec_line(item: ExportItem, *, host: str) -> bytes:
    """One HEC event for ``item``: its time in seconds, its OCSF event, its identity as fields."""
    envelope = _HecEvent(
        time=item.ts_us / 1_000_000,
        host=host,
        source=PRODUCT_NAME,
        sourcetype=SOURCETYPE,
        fields={"record_hash": item.hash, "replica": item.replica, "seq": str(item.seq)},
        event=item.event_json,
    )
    return _encoder.encode(envelope)


class HecSink(Sink):
    """POSTs batches of at most ``max_events`` events and about ``max_bytes`` bytes each.

    The token is sent as ``Authorization: Splunk <token>`` and never logged or put in errors.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        max_events: int = 100,
        max_bytes: int = 800_000,
        timeout_s: float = 10.0,
        hostname: str | None = None,
        name: str = "",
    ) -> None:
        super().__init__(name or f"hec:{url}")
        self.endpoint = url.rstrip("/") + EVENT_PATH
        self.max_events, self.max_bytes, self.timeout_s = max_events, max_bytes, timeout_s
        self.hostname = hostname or socket.gethostname()
        self._headers = {"Authorization": f"Splunk {token}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def send(self, batch: list[ExportItem]) -> None:
        """POST the batch in as few requests as the limits allow, in order.

        Raises ``SinkUnavailableError`` at the first request not acknowledged, with
        ``delivered`` = the items the earlier requests delivered.
        """
        delivered = 0
        for lines in self._requests(batch):
            try:
                await self._post(b"\n".join(lines))
            except SinkUnavailableError as exc:
                exc.delivered = delivered
                raise
            delivered += len(lines)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _requests(self, batch: list[ExportItem]) -> Iterator[list[bytes]]:
        lines: list[bytes] = []
        size = 0
        for item in batch:
            line = hec_line(item, host=self.hostname)
            full = len(lines) >= self.max_events or size + len(line) + 1 > self.max_bytes
            if lines and full:
                yield lines
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        if lines:
            yield lines

    async def _post(self, body: bytes) -> None:
        try:
            session = self._open_session()
            async with session.post(self.endpoint, data=body, headers=self._headers) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SinkUnavailableError(f"HEC {self.endpoint}: {type(exc).__name__}") from exc
        _check_reply(status, payload)

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session


def _check_reply(status: int, payload: bytes) -> None:
    """Accept only HTTP 200 with ``{"code": 0}``; anything else is not an acknowledgement."""
    try:
        reply = _reply_decoder.decode(payload)
    except msgspec.DecodeError:
        reply = None
    if status != 200 or reply is None or reply.code != 0:
        code = "none" if reply is None else str(reply.code)
        raise SinkUnavailableError(f"HEC refused the batch: HTTP {status}, code {code}")

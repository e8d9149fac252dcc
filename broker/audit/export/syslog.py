"""RFC 5424 syslog over TCP with octet-counting framing (RFC 6587), one frame per OCSF event.

Plain TCP syslog has no application-level acknowledgement, so "acknowledged" here means: every
byte of the batch was written, the receiver's TCP stack acknowledged it (Linux ``SIOCOUTQ``
reaches 0), and the connection was neither reset nor in error afterwards. A reset while a batch
is in flight fails the batch, which the exporter then re-sends (the record hash in the
structured data lets the SIEM drop the copy). What no TCP sender can see is a receiver that
accepted bytes into its socket buffer and then died before reading them; docs/siem.md says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
import termios
from datetime import UTC, datetime
from typing import Any, Final

from broker.audit.export.errors import SinkUnavailableError
from broker.audit.export.ocsf import ExportItem
from broker.audit.export.sinks import Sink

APP_NAME: Final = "a2a-broker"
FACILITY_LOCAL0: Final = 16
# The SD-ID's enterprise number is the one RFC 5612 reserves for documentation; an operator
# with a registered Private Enterprise Number may substitute theirs.
SD_ID: Final = "a2ab@32473"
# OCSF severity_id -> syslog severity (RFC 5424 section 6.2.1). Unknown/Other -> notice.
_SYSLOG_SEVERITY: Final = {0: 5, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 0, 99: 5}
_ACK_POLL_S: Final = 0.002


def format_frame(item: ExportItem, *, facility: int, hostname: str, procid: str) -> bytes:
    """One octet-counted RFC 5424 frame: ``MSG-LEN SP SYSLOG-MSG``; MSG is the OCSF JSON.

    MSG is sent as MSG-ANY (no BOM): it is JSON, and many JSON consumers reject a leading BOM.
    """
    pri = facility * 8 + _SYSLOG_SEVERITY.get(item.severity_id, 5)
    header = " ".join(
        (
            f"<{pri}>1",
            _timestamp(item.ts_us),
            _header_field(hostname, 255),
            APP_NAME,
            _header_field(procid, 128),
            _header_field(item.kind, 32),
        )
    )
    structured = (
        f'[{SD_ID} seq="{item.seq}" replica="{sd_escape(item.replica)}" '
        f'hash="{sd_escape(item.hash)}"]'
    )
    message = f"{header} {structured} ".encode() + bytes(item.event_json)
    return f"{len(message)} ".encode() + message


def sd_escape(value: str) -> str:
    """An SD-PARAM value with '"', '\\' and ']' escaped (RFC 5424 section 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, max_length: int) -> str:
    # Header fields are PRINTUSASCII (33..126) or the NILVALUE "-".
    printable = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:max_length]
    return printable or "-"


def _timestamp(ts_us: int) -> str:
    seconds, micros = divmod(ts_us, 1_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SyslogSink(Sink):
    """Sends each batch over one reused TCP connection; reconnects after any failure."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        facility: int = FACILITY_LOCAL0,
        hostname: str | None = None,
        timeout_s: float = 10.0,
        name: str = "",
    ) -> None:
        super().__init__(name or f"syslog:{host}:{port}")
        self.host, self.port, self.facility, self.timeout_s = host, port, facility, timeout_s
        self.hostname = hostname or socket.gethostname()
        self.procid = str(os.getpid())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, batch: list[ExportItem]) -> None:
        """Write the batch as frames; return once the receiver's TCP stack acknowledged it."""
        data = b"".join(
            format_frame(item, facility=self.facility, hostname=self.hostname, procid=self.procid)
            for item in batch
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                writer = await self._connection()
                writer.write(data)
                await writer.drain()
                await self._wait_acknowledged(writer)
        except (OSError, TimeoutError) as exc:
            await self.aclose()
            raise SinkUnavailableError(
                f"syslog {self.host}:{self.port}: {type(exc).__name__}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and self._reader is not None:
            # A receiver never sends; end of stream means it is going away, so start afresh.
            if not self._reader.at_eof() and not _broken(self._reader, self._writer):
                return self._writer
            await self.aclose()
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._writer

    async def _wait_acknowledged(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        # The kernel offers no event for "peer acknowledged everything"; poll its counter.
        while writer.transport.get_write_buffer_size() or _unacknowledged_bytes(sock):  # noqa: ASYNC110
            await asyncio.sleep(_ACK_POLL_S)
        # Two turns of the loop let a reset that raced the last write reach the transport.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if self._reader is None or _broken(self._reader, writer):
            raise ConnectionResetError("the receiver reset the connection during the batch")


def _broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """The connection was reset or closed by an error (a graceful FIN alone is not broken)."""
    if writer.transport.is_closing() or reader.exception() is not None:
        return True
    sock = writer.get_extra_info("socket")
    return sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0


def _unacknowledged_bytes(sock: Any) -> int:
    """Bytes the peer's TCP stack has not acknowledged yet (Linux); 0 where unknown."""
    if sock is None or not sys.platform.startswith("linux"):
        return 0
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    count: int = struct.unpack("i", raw)[0]
    return count

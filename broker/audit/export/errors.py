"""The exporter's error types.

These never reach a caller of the broker: export runs beside the hot path, so its failures are
logged and retried, not mapped to the wire. Lower-level errors (``OSError``, ``aiohttp``,
``redis``) are translated into these in exactly one place per backend.
"""

from __future__ import annotations


class ExportError(Exception):
    """Base of every error the SIEM exporter raises."""


class SinkUnavailableError(ExportError):
    """The sink did not acknowledge a batch; the exporter retries it.

    ``delivered`` counts the leading items of the batch the sink did acknowledge (a sink that
    sends a batch in several requests may fail part-way); the exporter moves its position past
    them and retries only the rest, so nothing acknowledged is sent twice.
    """

    def __init__(self, message: str, *, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class PositionStoreError(ExportError):
    """The export position could not be read or durably saved."""

"""How the audit log's group commit batched during a point: fsyncs and records per request.

Read from the broker's own ``/metrics`` (with its admin token) before and after a point, outside
wrk's hot path: ``a2a_broker_audit_fsyncs_total`` counts fsyncs of the audit file, and the count
of ``a2a_broker_audit_write_seconds`` the records appended. Records per fsync is how many
records (of how many requests) one fsync made durable.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Mapping

_FSYNCS = re.compile(r"^a2a_broker_audit_fsyncs_total (\S+)$", re.M)
_RECORDS = re.compile(r"^a2a_broker_audit_write_seconds_count (\S+)$", re.M)


def audit_counts(url: str, headers: Mapping[str, str]) -> tuple[float, float] | None:
    """(fsyncs, records) so far, or None if the broker exposes neither."""
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            text = answer.read().decode()
    except OSError:
        return None
    fsyncs, records = _FSYNCS.search(text), _RECORDS.search(text)
    if fsyncs is None or records is None:
        return None
    return float(fsyncs[1]), float(records[1])


class AuditCounters:
    """``start()`` before a point, ``per_request(n)`` after it."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._url, self._headers = url, headers
        self._before: tuple[float, float] | None = None

    def start(self) -> None:
        self._before = audit_counts(self._url, self._headers)

    def per_request(self, requests: int) -> dict[str, float]:
        after = audit_counts(self._url, self._headers)
        if self._before is None or after is None or not requests:
            return {}
        fsyncs, records = after[0] - self._before[0], after[1] - self._before[1]
        return {
            "audit_fsyncs_per_req": fsyncs / requests,
            "audit_records_per_fsync": records / fsyncs if fsyncs else 0.0,
        }

"""The latest requests every broker process mediated, for the console's live traffic page.

Each process adds what it saw in batches (``broker.runtime.traffic``); the page reads the
newest, whichever worker or replica answers it. Rows are opaque bytes here (the encoded
``broker.observability.record.RequestSeen``); only the newest ``keep`` are kept.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Sequence


class RecentTraffic(abc.ABC):
    @abc.abstractmethod
    async def add(self, rows: Sequence[bytes], keep: int, ttl_s: int) -> None:
        """Add ``rows`` (oldest first) and keep only the newest ``keep``."""

    @abc.abstractmethod
    async def latest(self, limit: int) -> list[bytes]:
        """The newest ``limit`` rows, newest first."""


class MemoryRecentTraffic(RecentTraffic):
    """This process's rows (the memory store serves one process)."""

    def __init__(self) -> None:
        self._rows: deque[bytes] = deque()

    async def add(self, rows: Sequence[bytes], keep: int, ttl_s: int) -> None:
        if self._rows.maxlen != keep:  # the newest ``keep`` stay: the oldest drop off in C
            self._rows = deque(self._rows, maxlen=keep)
        self._rows.extend(rows)

    async def latest(self, limit: int) -> list[bytes]:
        return list(reversed(self._rows))[:limit]

"""The streaming scanner: finds values across chunk boundaries without holding the whole stream.

After each chunk it releases all text that no value can still reach, and holds the rest: from
where the earliest possible beginning of a value starts (each recognizer's ``tail``), and never
through a candidate that is still being read. What it holds is bounded by the longest value a
recognizer reads (``Detector.max_len``: about 8.4 k characters for an unfinished PEM private key,
6 k for an unfinished JWT, tens of characters for everything else); in plain prose it is the last
word or number. Whatever the chunking, it finds exactly what a scan of the whole text finds
(a property test checks this).
"""

from __future__ import annotations

from broker.datacontrols.detector import LEFT_CONTEXT, Detector
from broker.datacontrols.findings import Finding


class StreamScanner:
    """Feed text chunks; get back released text with the values in it (offsets relative to
    the released text). ``finish()`` releases the rest. ``released`` counts characters so far."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        self._buffer = ""  # LEFT_CONTEXT characters already released, then held text
        self._pos = 0  # where the held text starts in _buffer
        self.released = 0
        self.max_hold = detector.max_len + 1

    @property
    def held(self) -> int:
        """Characters received but not yet released."""
        return len(self._buffer) - self._pos

    def feed(self, chunk: str) -> tuple[str, list[Finding]]:
        self._buffer += chunk
        return self._release(final=False)

    def finish(self) -> tuple[str, list[Finding]]:
        return self._release(final=True)

    def _release(self, *, final: bool) -> tuple[str, list[Finding]]:
        buffer, pos = self._buffer, self._pos
        findings, raw = self._detector.scan_from(buffer, pos)
        cut = len(buffer) if final else self._detector.tail_start(buffer, pos)
        moved = True
        while moved:  # never cut through text a candidate read: it is decided as a whole
            moved = False
            for start, end in raw:
                if start < cut < end:
                    cut, moved = max(start, pos), True
        released = [Finding(f.start - pos, f.end - pos, f.kind) for f in findings if f.end <= cut]
        text = buffer[pos:cut]
        keep = max(0, cut - LEFT_CONTEXT)
        self._buffer, self._pos = buffer[keep:], cut - keep
        self.released += len(text)
        return text, released

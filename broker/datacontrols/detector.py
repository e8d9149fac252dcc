"""The detector: runs every enabled recognizer over a text and resolves overlaps.

Overlaps are resolved the same way everywhere, so the streaming scanner finds exactly what a
scan of the whole text finds: leftmost first, then the longest, then the recognizer listed first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker.datacontrols.findings import Finding
from broker.datacontrols.national_ids import DEFAULT_NATIONAL_IDS, national_id
from broker.datacontrols.recognizers import (
    Recognizer,
    card,
    email,
    iban,
    ipv4,
    ipv6,
    phone_international,
    phone_national,
)
from broker.datacontrols.secret_patterns import secret_recognizers

# Characters of already emitted text the streaming scanner keeps for the recognizers' edge checks.
LEFT_CONTEXT = 1


@dataclass(frozen=True, slots=True)
class DetectorOptions:
    """Which built-in recognizers run. ``phone_regions``: ISO 3166 codes in which numbers written
    without a country code are read; ``national_ids``: names from ``NATIONAL_IDS``;
    ``ip_private``: also report private, loopback and link-local addresses."""

    phone_regions: tuple[str, ...] = ("US", "GB")
    national_ids: tuple[str, ...] = DEFAULT_NATIONAL_IDS
    ip_private: bool = False
    secrets: bool = True
    pii: bool = True


def builtin_recognizers(options: DetectorOptions) -> list[Recognizer]:
    """Secrets first (a key inside a URL is a key), then cards, IBANs, ids, phones, e-mail, IPs."""
    found: list[Recognizer] = list(secret_recognizers()) if options.secrets else []
    if options.pii:
        found += [card(), iban(), *(national_id(n) for n in options.national_ids)]
        found.append(phone_international())
        if options.phone_regions:
            found.append(phone_national(options.phone_regions))
        found += [email(), ipv4(options.ip_private), ipv6(options.ip_private)]
    return found


class Detector:
    """Finds typed values in text. Stateless and safe to share between requests."""

    def __init__(self, recognizers: Sequence[Recognizer]) -> None:
        self._recognizers = tuple(recognizers)
        self.max_len = max((r.max_len for r in self._recognizers), default=0)
        self.kinds = frozenset(r.kind for r in self._recognizers)

    @classmethod
    def builtin(cls, options: DetectorOptions | None = None) -> Detector:
        return cls(builtin_recognizers(options or DetectorOptions()))

    @property
    def recognizers(self) -> tuple[Recognizer, ...]:
        return self._recognizers

    def scan(self, text: str) -> list[Finding]:
        """The values in ``text``, sorted and not overlapping."""
        return self.scan_from(text, 0)[0]

    def scan_from(self, text: str, pos: int) -> tuple[list[Finding], list[tuple[int, int]]]:
        """The values starting at or after ``pos``, and every candidate's raw span (for the
        streaming scanner, which must not cut through text a candidate read)."""
        found: list[tuple[int, int, int, str]] = []
        raw: list[tuple[int, int]] = []
        for rank, recognizer in enumerate(self._recognizers):
            for start, end, span in recognizer.candidates(text, pos):
                raw.append((start, end))
                if span is not None and span[0] >= pos:
                    found.append((span[0], -(span[1] - span[0]), rank, recognizer.kind))
        return _resolve(found), raw

    def tail_start(self, text: str, pos: int) -> int:
        """Where the earliest text that could still begin a value starts (``len(text)`` if none):
        the streaming scanner holds text from here until more arrives."""
        end = len(text)
        lowest = end
        for recognizer in self._recognizers:
            found = recognizer.tail.search(text, max(pos, end - recognizer.max_len - 1))
            if found is not None and found.start() < lowest:
                lowest = found.start()
        return lowest


def _resolve(found: list[tuple[int, int, int, str]]) -> list[Finding]:
    found.sort()
    kept: list[Finding] = []
    reach = -1
    for start, negative_length, _rank, kind in found:
        if start >= reach:
            kept.append(Finding(start, start - negative_length, kind))
            reach = start - negative_length
    return kept


def kinds_of(findings: Iterable[Finding]) -> dict[str, int]:
    """Count per type, for audit and tags (never values)."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return counts

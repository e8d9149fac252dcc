"""The detector: runs every enabled recognizer over a text and resolves overlaps.

Overlaps are resolved the same way everywhere, so the streaming scanner finds exactly what a
scan of the whole text finds: leftmost first, then the longest, then the recognizer listed first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker.datacontrols.findings import Finding
from broker.datacontrols.national_ids import national_id
from broker.datacontrols.recognizers import (
    DIGIT_RUNS,
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
from broker.settings_datacontrols import DEFAULT_NATIONAL_IDS

# Characters of already released text the streaming scanner keeps for the recognizers' edge
# checks, which read at most two characters before a candidate.
LEFT_CONTEXT = 8
# Numbers: a value has at least 7 digits (NIE, codice fiscale) or 4 runs (IPv4), its runs at
# most 6 separators or capitals apart ("GB82 WEST 1234…", "(201) 555-0123").
_GAP, _MIN_DIGITS, _MIN_RUNS = 6, 7, 4
_SEP = r"[ \-./()+A-Z]"
_CLUSTER = re.compile(rf"[0-9]+(?:{_SEP}{{1,{_GAP}}}[0-9]+)*")
# The same clusters, only those of at least _MIN_DIGITS characters (a value's cluster is that
# long: _MIN_DIGITS digits, or _MIN_RUNS runs and their separators), searched in the text's
# ASCII bytes with every digit made "0": one literal leads the pattern, which the regex engine
# skips to at memchr speed, where a class of ten digits is tried at every character. The
# look-ahead reads the cluster's first _MIN_DIGITS characters: digits, or separators that a
# digit follows within the gap.
_CLUSTER_LONG = re.compile(
    rf"0(?<!00)(?=(?:0|{_SEP}(?={_SEP}{{0,{_GAP - 1}}}0)){{{_MIN_DIGITS - 1}}})"
    rf"0*(?:{_SEP}{{1,{_GAP}}}0+)*".encode()
)
# A date as ``_is_date`` reads one, in the same bytes: a cluster of at most 10 characters.
_DATE_LONG = re.compile(rb"0000([-/.])0+(?:\1)0+|0+([-/.])0+(?:\2)0000")
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_DIGITS = frozenset("0123456789")
_MAX_RUN = 64  # runs of digits longer than this are tried only by recognizers of any length


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

    def __init__(self, recognizers: Sequence[Recognizer], *, fast: bool = True) -> None:
        """``fast=False``: the plain searches, without the shortcuts that give the same
        findings (the tests compare the two)."""
        self._recognizers = tuple(recognizers)
        self.max_len = max((r.max_len for r in self._recognizers), default=0)
        self.kinds = frozenset(r.kind for r in self._recognizers)
        self._searched = [
            (rank, r, needle(r.gate) if fast else "", r.gate)
            for rank, r in enumerate(self._recognizers)
            if r.leads is None
        ]
        self._dense_runs = dense_runs if fast else dense_runs_reference
        # One search for every tail: the leftmost start any of them matches at is the earliest.
        self._tails = re.compile("|".join(f"(?:{r.tail.pattern})" for r in self._recognizers))
        numeric = [
            (rank, r, lead)
            for rank, r in enumerate(self._recognizers)
            if r.leads is not None
            for lead in r.leads
        ]
        self._numeric = bool(numeric)
        self._table = {size: _numeric_table(numeric, size) for size in range(1, _MAX_RUN + 1)}
        self._table_longer = _numeric_table(numeric, None)

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
        for rank, recognizer, char, gates in self._searched:
            if char and char not in text:  # one memchr: a gate without it cannot be there
                continue
            for gate in gates:  # inline: most texts pass no gate, and this runs per chunk
                if gate in text:
                    break
            else:
                if gates:
                    continue
            for start, end, span in recognizer.candidates(text, pos):
                raw.append((start, end))
                if span is not None and span[0] >= pos:
                    found.append((span[0], -(span[1] - span[0]), rank, recognizer.kind))
        if self._numeric:
            self._numbers(text, pos, found, raw)
        return _resolve(found), raw

    def tail_start(self, text: str, pos: int) -> int:
        """Where the earliest text that could still begin a value starts (``len(text)`` if none):
        the streaming scanner holds text from here until more arrives."""
        found = self._tails.search(text, max(pos, len(text) - self.max_len - 1))
        return len(text) if found is None else found.start()

    def _numbers(
        self,
        text: str,
        pos: int,
        found: list[tuple[int, int, int, str]],
        raw: list[tuple[int, int]],
    ) -> None:
        """The numeric recognizers, tried only where a run of digits lets them start."""
        size = len(text)
        for start, end in self._dense_runs(text, pos):
            after = text[end] if end < size else ""
            for lead, by_char in self._table.get(end - start, self._table_longer):
                at = start - lead
                if at < pos:
                    continue
                for rank, recognizer in by_char.get(text[at], ()):
                    follows = recognizer.follows
                    if follows is not None and after and after not in follows:
                        continue
                    candidate = recognizer.anchored_at(text, at)
                    if candidate is None:
                        continue
                    raw.append(candidate[:2])
                    span = candidate[2]
                    if span is not None:
                        found.append((span[0], -(span[1] - span[0]), rank, recognizer.kind))


# Characters from the most to the least common in prose, JSON and code, roughly; any other is
# taken as rarer than all of them. Only the cost of a scan depends on this order.
_COMMON = " etaoinsrhldcumfpgwyb,.vk'\"\nTSAI:x0C1M2PBWDHR-E/FNOL3G_5j9q4z=876()UKVJYQXZ"


def needle(gates: tuple[str, ...]) -> str:
    """The character every one of ``gates`` contains that is rarest in text ("" if none): a
    text without it passes no gate, and ``in`` finds one character at memchr speed, many
    times faster than a string."""
    if not gates:
        return ""
    shared = set(gates[0]).intersection(*gates[1:])
    if not shared:
        return ""
    return max(shared, key=lambda c: (_COMMON.find(c) if c in _COMMON else len(_COMMON), c))


def dense_runs_reference(text: str, pos: int) -> list[tuple[int, int]]:
    """``dense_runs`` written plainly, for the tests: the slower search of the clusters."""
    if 0 < pos < len(text) and text[pos - 1] in _DIGITS:
        rest = DIGIT_RUNS.match(text, pos)
        pos = rest.end() if rest else pos
    dense: list[tuple[int, int]] = []
    for cluster in _CLUSTER.finditer(text, pos):
        start, end = cluster.span()
        if end - start < _MIN_DIGITS:  # fewer digits, and too short for _MIN_RUNS runs
            continue
        runs = [run.span() for run in DIGIT_RUNS.finditer(text, start, end)]
        digits = sum(b - a for a, b in runs)
        if (digits >= _MIN_DIGITS or len(runs) >= _MIN_RUNS) and not _is_date(text, runs):
            dense += runs
    return dense


def dense_runs(text: str, pos: int) -> list[tuple[int, int]]:
    """The runs of digits from ``pos`` on that belong to a cluster (runs joined by at most
    ``_GAP`` separators or capitals) holding at least ``_MIN_DIGITS`` digits or ``_MIN_RUNS``
    runs, dates aside. The runs of every value the numeric recognizers accept, from its first,
    make such a cluster (its validator needs that many digits), so a run outside one cannot
    start a value; in prose most numbers are dropped here, by one regex pass."""
    if 0 < pos < len(text) and text[pos - 1] in _DIGITS:
        rest = DIGIT_RUNS.match(text, pos)  # the end of a run that began before pos
        pos = rest.end() if rest else pos
    dense: list[tuple[int, int]] = []
    # Every character one byte ("?" for any other than ASCII, which no pattern reads): the
    # offsets are the text's.
    coded = text.encode("ascii", "replace").translate(_ZEROS)
    for cluster in _CLUSTER_LONG.finditer(coded, pos):
        start, end = cluster.span()
        if end - start <= 10 and _DATE_LONG.fullmatch(coded, start, end):
            continue  # the most common case in prose, decided without the runs
        runs = [run.span() for run in DIGIT_RUNS.finditer(text, start, end)]
        digits = sum(b - a for a, b in runs)
        if (digits >= _MIN_DIGITS or len(runs) >= _MIN_RUNS) and not _is_date(text, runs):
            dense += runs
    return dense


def _is_date(text: str, cluster: list[tuple[int, int]]) -> bool:
    """2024-05-12, 12/05/2024, 2024.5.12: no value is one (a phone needs 9 digits or a +)."""
    if len(cluster) != 3 or cluster[2][0] - cluster[0][1] != 2 + cluster[1][1] - cluster[1][0]:
        return False
    sizes = [end - start for start, end in cluster]
    first_sep, second_sep = text[cluster[0][1]], text[cluster[1][1]]
    return (
        first_sep == second_sep
        and first_sep in "-/."
        and (sizes[0] == 4 or sizes[2] == 4)
        and sum(sizes) <= 8
    )


_Table = list[tuple[int, dict[str, list[tuple[int, Recognizer]]]]]


def _numeric_table(entries: list[tuple[int, Recognizer, int]], size: int | None) -> _Table:
    """For runs of ``size`` digits (None: longer than any listed): per lead, per character at
    the candidate's start, the recognizers to try."""
    by_lead: dict[int, dict[str, list[tuple[int, Recognizer]]]] = {}
    for rank, recognizer, lead in entries:
        runs = recognizer.first_runs
        if runs is not None and (size is None or size not in runs):
            continue
        by_char = by_lead.setdefault(lead, {})
        for char in recognizer.starts:
            by_char.setdefault(char, []).append((rank, recognizer))
    return sorted(by_lead.items())


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
